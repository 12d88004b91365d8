"""The config files shipped in ``config/``: all valid, and the reference one complete."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from shadowproxy.config import Config, ConfigError, HostPort, load_config, parse_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
EXAMPLE = CONFIG_DIR / "example.yaml"
COMMAND_TIMEOUT = 30


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of every key of the model; "host:port" addresses count as one key."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and annotation is not HostPort:
            keys |= model_keys(annotation, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            keys.add(prefix + name)
    return keys


def file_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        if isinstance(value, Mapping):
            keys |= file_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_the_documented_configs_exist() -> None:
    assert {"demo.yaml", "example.yaml", "minimal.yaml"} <= {p.name for p in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_file_validates(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_check_config_command_accepts_config_file(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout


def test_example_lists_every_key_of_the_config_model() -> None:
    listed = file_keys(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    expected = model_keys(Config)
    assert sorted(expected - listed) == [], "keys missing from config/example.yaml"
    assert sorted(listed - expected) == [], "keys in config/example.yaml the model lacks"


def test_example_sets_every_key_to_its_default() -> None:
    example = load_config(EXAMPLE)
    required_only = parse_config(
        {"primary": {"url": example.primary.url}, "candidate": {"url": example.candidate.url}}
    )
    assert example.model_dump() == required_only.model_dump()


def commented_examples(text: str) -> list[tuple[int, tuple[str, ...], dict[str, Any]]]:
    """The ``# e.g.`` examples of a config file: each one's line, the keys it sits under
    (by indentation) and what it sets, as YAML."""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines):
        match = re.fullmatch(r"( *)# e\.g\.(.*)", line)
        if match is None:
            continue
        indent, rest = match.groups()
        if rest.strip():
            block = rest.strip()
        else:
            prefix = indent + "# "
            block_lines = []
            for following in lines[number + 1 :]:
                if not following.startswith(prefix):
                    break
                block_lines.append(following[len(prefix) :])
            block = "\n".join(block_lines)
        parents: list[str] = []
        depth = len(indent)
        for above in reversed(lines[:number]):
            key = re.match(r"( *)([a-z_]+):", above)
            if key is not None and len(key.group(1)) < depth:
                parents.insert(0, key.group(2))
                depth = len(key.group(1))
        found.append((number + 1, tuple(parents), yaml.safe_load(block)))
    return found


def test_example_commented_examples_are_valid() -> None:
    """Every ``# e.g.`` example, put in place of the key it illustrates, validates."""
    text = EXAMPLE.read_text(encoding="utf-8")
    examples = commented_examples(text)
    assert len(examples) >= 10
    for line, parents, example in examples:
        data = yaml.safe_load(text)
        section = data
        for key in parents:
            section = section[key]
        assert isinstance(example, dict), f"line {line}: not a mapping of keys"
        assert set(example) <= set(section), f"line {line}: {sorted(example)} not under {parents}"
        section.update(example)
        try:
            parse_config(data)
        except ConfigError as error:
            pytest.fail(f"config/example.yaml line {line}: {error}")
