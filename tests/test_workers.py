"""The supervisor's reload, without processes: what it reads and what it leaves to watch."""

from __future__ import annotations

from pathlib import Path

from shadowproxy.config import parse_config_text
from shadowproxy.watch import FileWatcher
from shadowproxy.workers import Supervisor

CONFIG = """\
listen: 127.0.0.1:0
admin: 127.0.0.1:0
primary: {url: "http://127.0.0.1:1"}
candidate: {url: "http://127.0.0.1:2"}
"""


def test_a_reload_by_signal_is_not_repeated_by_the_watcher(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    supervisor = Supervisor(parse_config_text(CONFIG, str(path)), CONFIG, path, workers=2)
    reloads: list[str] = []
    watcher = FileWatcher(path, 60.0, lambda: reloads.append("watcher"))
    supervisor._watcher = watcher

    edited = CONFIG + "mirror: {sample_rate: 0.5}\n"
    path.write_text(edited)
    assert supervisor.reload()  # as on SIGHUP, before the watcher looked
    assert supervisor.config.mirror.sample_rate == 0.5
    assert not watcher.check()  # the file as reloaded is the one it knows
    assert reloads == []

    path.write_text(edited + "# and edited again\n")
    assert watcher.check()
    assert reloads == ["watcher"]
