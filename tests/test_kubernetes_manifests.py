"""The Kubernetes examples in config/kubernetes: schema-valid, and wired the way the proxy needs.

Schemas come bundled with ``kubernetes-validate``, so nothing here reaches the network; the
probe test runs the probes' own scripts against the real admin app on a loopback port.
"""

from __future__ import annotations

import asyncio
import posixpath
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "config" / "kubernetes"
MANIFESTS = sorted(MANIFEST_DIR.glob("*.yaml"))

# The oldest version the examples are written for (the preStop sleep action is on by default
# from 1.30) and the newest whose schemas kubernetes-validate bundles (pinned in pyproject).
KUBERNETES_VERSIONS = ("1.30", "1.37")

PROXY_CONTAINER = "shadowproxy"
PROBE_ENDPOINTS = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}

Resource = dict[str, Any]


def _load(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _resources(kind: str | None = None) -> Iterator[Resource]:
    for path in MANIFESTS:
        for resource in _load(path):
            if kind is None or resource["kind"] == kind:
                yield resource


def _by_name(kind: str, name: str) -> Resource:
    found = [r for r in _resources(kind) if r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r}, found {len(found)}"
    return found[0]


def _proxy_deployments() -> list[Resource]:
    return [
        deployment
        for deployment in _resources("Deployment")
        if any(c["name"] == PROXY_CONTAINER for c in _pod_spec(deployment)["containers"])
    ]


def _pod_spec(deployment: Resource) -> Resource:
    spec: Resource = deployment["spec"]["template"]["spec"]
    return spec


def _container(deployment: Resource, name: str) -> Resource:
    (container,) = [c for c in _pod_spec(deployment)["containers"] if c["name"] == name]
    return container


def _config_path(container: Resource) -> str:
    argv = [*container.get("command", []), *container.get("args", [])]
    for flag in ("--config", "-c"):
        if flag in argv:
            return str(argv[argv.index(flag) + 1])
    for env in container.get("env", []):
        if env["name"] == "SHADOWPROXY_CONFIG":
            return str(env["value"])
    raise AssertionError(f"{container['name']}: no --config flag and no SHADOWPROXY_CONFIG")


def _config_source(deployment: Resource) -> tuple[Resource, Resource, str]:
    """The config file's volume mount, its volume and the ConfigMap key it reads."""
    container = _container(deployment, PROXY_CONTAINER)
    path = _config_path(container)
    directory, key = posixpath.split(path)
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == directory]
    assert mounts, f"nothing is mounted at {directory}, where {path} is read from"
    (mount,) = mounts
    (volume,) = [v for v in _pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return mount, volume, key


def _proxy_config(deployment: Resource) -> Any:
    from shadowproxy.config import parse_config

    _, volume, key = _config_source(deployment)
    config_map = _by_name("ConfigMap", volume["configMap"]["name"])
    assert key in config_map["data"], f"ConfigMap has no key {key!r}"
    text = config_map["data"][key]
    return parse_config(yaml.safe_load(text), f"ConfigMap {config_map['metadata']['name']}")


def _port_number(container: Resource, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    return int(number)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _probe_script(probe: Resource) -> str:
    command = probe["exec"]["command"]
    assert command[:2] == ["python", "-c"], f"unexpected exec probe {command}"
    return str(command[2])


def test_there_are_manifests_and_a_proxy_deployment() -> None:
    assert MANIFESTS, f"no manifests in {MANIFEST_DIR}"
    assert _proxy_deployments(), f"no Deployment with a {PROXY_CONTAINER!r} container"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    resources = _load(path)
    assert resources, f"{path.name} holds no resources"
    for resource in resources:
        name = f"{path.name}: {resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        try:
            # strict: unknown fields (typos such as "readinesProbe") are errors too.
            validated = kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {where}: {error.message}")
        # The package falls back to older schemas for versions it lacks; don't let it.
        assert validated == version


@pytest.mark.parametrize("deployment", _proxy_deployments(), ids=lambda d: d["metadata"]["name"])
class TestProxySidecar:
    def test_embedded_config_is_valid_and_matches_the_pod(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        proxy = _container(deployment, PROXY_CONTAINER)
        assert config.listen.host == "0.0.0.0", "the proxy must accept traffic on the Pod IP"
        assert config.listen.port == _port_number(proxy, "proxy")
        assert config.primary.url.startswith(("http://127.0.0.1:", "http://localhost:")), (
            "a sidecar's primary is the app in the same Pod, over loopback"
        )
        app_ports = {
            p["containerPort"]
            for c in _pod_spec(deployment)["containers"]
            if c["name"] != PROXY_CONTAINER
            for p in c.get("ports", [])
        }
        assert int(config.primary.url.rsplit(":", 1)[1]) in app_ports
        # The root filesystem is read-only: the discrepancy log goes to standard output.
        assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
        assert config.log.path == "-"

    def test_hot_reload_and_worker_count(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        assert config.reload.watch, "ConfigMap edits only take effect when the file is watched"
        # The default worker count is the node's core count, not the container's CPU share.
        container = _container(deployment, PROXY_CONTAINER)
        argv = container["args"]
        assert "--workers" in argv or "-w" in argv
        # args, not command: the image's entrypoint (tini) stays PID 1 and reaps orphans.
        assert "command" not in container

    def test_candidate_url_names_a_service_of_the_examples(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        host_port = config.candidate.url.split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        service = _by_name("Service", host.split(".", 1)[0])
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]
        assert not _selects(
            service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
        ), "the candidate Service must not select the primary's Pods"

    def test_config_map_is_mounted_as_a_directory(self, deployment: Resource) -> None:
        mount, volume, _ = _config_source(deployment)
        assert "configMap" in volume
        # A subPath mount never sees ConfigMap updates, so hot reload would silently stop.
        assert "subPath" not in mount
        assert "subPathExpr" not in mount
        assert mount.get("readOnly") is True
        config_map = _by_name("ConfigMap", volume["configMap"]["name"])
        assert config_map.get("immutable") is not True, "an immutable ConfigMap can't be edited"

    def test_probes_reach_the_admin_endpoints(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        proxy = _container(deployment, PROXY_CONTAINER)
        for probe_name, endpoint in PROBE_ENDPOINTS.items():
            probe = proxy[probe_name]
            if "httpGet" in probe:
                # The kubelet connects from the node to the Pod IP: loopback can't be reached.
                assert not config.admin.is_loopback, f"{probe_name}: admin binds loopback"
                assert probe["httpGet"]["path"] == endpoint
                assert _port_number(proxy, probe["httpGet"]["port"]) == config.admin.port
            else:
                # Exec probes run inside the container and reach loopback, so the admin
                # listener (with /config and /report) need not be reachable from elsewhere.
                assert config.admin.is_loopback, "with exec probes admin should bind loopback"
                script = _probe_script(probe)
                assert f'"{endpoint}"' in script, f"{probe_name} does not request {endpoint}"
                assert f'"{config.admin.host}", {config.admin.port}' in script

    def test_admin_port_is_not_exposed(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        proxy = _container(deployment, PROXY_CONTAINER)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for service in _resources("Service"):
            if not _selects(service["spec"]["selector"], labels):
                continue
            for port in service["spec"]["ports"]:
                target = _port_number(proxy, port.get("targetPort", port["port"]))
                assert target != config.admin.port, "the admin port must stay private"

    def test_service_targets_the_proxy_not_the_app(self, deployment: Resource) -> None:
        config = _proxy_config(deployment)
        proxy = _container(deployment, PROXY_CONTAINER)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        services = [s for s in _resources("Service") if _selects(s["spec"]["selector"], labels)]
        assert services, "no Service selects the proxy's Pods"
        for service in services:
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target == "proxy" or target == config.listen.port, (
                    f"Service {service['metadata']['name']} port {port['port']} targets "
                    f"{target!r}, not the proxy; traffic would bypass it"
                )
                assert _port_number(proxy, target) == config.listen.port

    def test_shutdown_order_leaves_the_app_up_while_the_proxy_drains(
        self, deployment: Resource
    ) -> None:
        config = _proxy_config(deployment)
        pod = _pod_spec(deployment)
        proxy = _container(deployment, PROXY_CONTAINER)
        proxy_sleep = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
        proxy_stop = proxy_sleep + config.shutdown_timeout + config.mirror.shutdown_grace
        for app in pod["containers"]:
            if app["name"] != PROXY_CONTAINER:
                app_sleep = app["lifecycle"]["preStop"]["sleep"]["seconds"]
                assert app_sleep >= proxy_sleep + config.shutdown_timeout
        assert pod["terminationGracePeriodSeconds"] > proxy_stop


async def _run_probe(script: str, admin_port: int, actual_port: int) -> tuple[int, str]:
    assert script.count(str(admin_port)) == 1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script.replace(str(admin_port), str(actual_port)),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize("deployment", _proxy_deployments(), ids=lambda d: d["metadata"]["name"])
async def test_probe_scripts_against_the_admin_app(deployment: Resource) -> None:
    """The probes' own scripts, run against the real admin app on a loopback port."""
    from shadowproxy.admin import build_admin_app

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    primary = await asyncio.start_server(accept, "127.0.0.1", 0)
    primary_url = f"http://127.0.0.1:{primary.sockets[0].getsockname()[1]}"
    config = _proxy_config(deployment)
    live = config.model_copy(
        update={"primary": config.primary.model_copy(update={"url": primary_url})}
    )
    proxy = _container(deployment, PROXY_CONTAINER)
    liveness = _probe_script(proxy["livenessProbe"])
    readiness = _probe_script(proxy["readinessProbe"])

    runner = web.AppRunner(build_admin_app(config=lambda: live, metrics=lambda: b""))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        assert await _run_probe(liveness, config.admin.port, port) == (0, "")
        assert await _run_probe(readiness, config.admin.port, port) == (0, "")

        primary.close()  # the app is down: /readyz answers 503, /healthz stays up
        await primary.wait_closed()
        code, message = await _run_probe(readiness, config.admin.port, port)
        assert code != 0
        assert "/readyz: HTTP 503" in message
        assert await _run_probe(liveness, config.admin.port, port) == (0, "")
    finally:
        primary.close()
        await runner.cleanup()

    # Nothing listening: the probe fails with a one-line message, not a traceback or a hang.
    code, message = await _run_probe(liveness, config.admin.port, port)
    assert code != 0
    assert message.startswith("/healthz:")
    assert "Traceback" not in message
