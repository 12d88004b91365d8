"""The supervisor's reload, without processes: what it reads and what it leaves to watch."""

from __future__ import annotations

from pathlib import Path

import trustme
from structlog.testing import capture_logs

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


def test_a_tls_pair_that_does_not_load_is_refused_before_any_worker_sees_it(
    tmp_path: Path, ca: trustme.CA
) -> None:
    identity = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    identity.cert_chain_pems[0].write_to_path(str(cert))
    identity.private_key_pem.write_to_path(str(key))
    text = CONFIG + f"listen_tls: {{address: 127.0.0.1:0, cert_file: {cert}, key_file: {key}}}\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    supervisor = Supervisor(parse_config_text(text, str(path)), text, path, workers=2)

    path.write_text(text + "mirror: {sample_rate: 0.5}\n")
    key.write_text("not a key\n")  # a renewal gone wrong
    with capture_logs() as logs:
        assert not supervisor.reload()
    assert [e["event"] for e in logs] == ["tls_reload_failed"]
    assert supervisor.config.mirror.sample_rate == 1.0  # the running config stays
