"""The Dockerfile, docker-compose.yml and Kubernetes manifests name only what exists
(issue 14.11). Docker cannot run here, so this is static: every file parses, every
command is a `conveyor` command with options it has, every app reference imports, every
probed port is the one the process listens on and every probed path is served, and
shutdown grace periods outlast the shutdown timeout.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml

from conveyor import Conveyor
from conveyor.api import Tokens, create_api
from conveyor.cli.commands import cli
from conveyor.cli.common import load_app
from conveyor.health import build_health_app
from conveyor.settings import Settings
from conveyor.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCKERFILE = ROOT / "Dockerfile"
URL = re.compile(r"https?://[^/:]+:(\d+)(/[^'\" ]*)")
DEFAULTS = Settings.load(environ={})


def conveyor_command(args: list[str]) -> tuple[str, dict[str, str]]:
    """Check `conveyor ARGS` against the CLI; return the command name and its options."""
    # Typer vendors its own click in recent versions: use the attributes, not the types.
    group: Any = typer.main.get_command(cli)
    name, rest = args[0], args[1:]
    command = group.commands.get(name)
    assert command is not None, f"`conveyor {name}` is not a command"
    known = {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    assert known, f"`conveyor {name}` has no options"
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--"):
            param = known.get(arg)
            assert param is not None, f"`conveyor {name}` has no option {arg}"
            if getattr(param, "is_flag", False):
                options[arg] = "true"
            else:
                options[arg] = rest[i + 1]
                i += 1
        else:
            positional.append(arg)
        i += 1
    for ref in positional:
        if ":" in ref:  # an app reference: it must import and be a Conveyor app
            assert isinstance(load_app(ref), Conveyor)
    return name, options


async def serves(command: str, path: str) -> bool:
    """Whether the process `conveyor COMMAND` answers GET `path` (any status but 404:
    readiness is 503 on the memory engine, which is still the route answering)."""
    if command == "worker":
        app: Any = build_health_app(Worker(Conveyor("memory://")))
    elif command == "api":
        app = create_api(Conveyor("memory://"), tokens=Tokens(), metrics_prefix="")
    else:
        return False
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return (await client.get(path)).status_code != 404


def listen_port(command: str, options: dict[str, str]) -> int | None:
    if command == "worker":
        return int(options.get("--health-port", DEFAULTS.health_port))
    if command == "api":
        return int(options.get("--port", DEFAULTS.api_port))
    return None


def seconds(text: Any) -> float:
    """A compose duration (`40s`, `1m30s`) or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", str(text))
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- docker compose ----------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_runs_redis_with_aof_and_every_conveyor_process() -> None:
    services = compose()["services"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    commands = {
        name: conveyor_command(svc["command"])[0]
        for name, svc in services.items()
        if name != "redis"
    }
    assert sorted(commands.values()) == ["api", "scheduler", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in commands:
        assert services[name]["environment"]["CONVEYOR_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name], f"{name} has no health check"


async def test_compose_health_checks_probe_served_paths_on_the_listening_port() -> None:
    services = compose()["services"]
    probed = 0
    for name, svc in services.items():
        if name == "redis":
            continue
        command, options = conveyor_command(svc["command"])
        test = " ".join(str(part) for part in svc["healthcheck"]["test"])
        for port, path in URL.findall(test):
            probed += 1
            assert int(port) == listen_port(command, options), (name, port)
            assert await serves(command, path), (name, path)
            assert path == "/health/ready"
        check = svc["healthcheck"]["test"]
        if "conveyor" in check:  # a CLI check: a real command with real options
            conveyor_command(check[check.index("conveyor") + 1 :])
    assert probed == 2  # the API and the workers


def test_compose_stop_grace_outlasts_the_worker_shutdown_timeout() -> None:
    worker = compose()["services"]["worker"]
    _, options = conveyor_command(worker["command"])
    timeout = float(options.get("--shutdown-timeout", DEFAULTS.shutdown_timeout))
    assert seconds(worker["stop_grace_period"]) > timeout


# --- kubernetes --------------------------------------------------------------------------------
def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container of every manifest."""
    out = []
    assert KUBERNETES, "no manifests in deploy/kubernetes"
    for path in KUBERNETES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                out += [(pod, c) for c in pod["containers"]]
    return out


async def test_kubernetes_probes_hit_served_paths_on_the_listening_port() -> None:
    kinds = set()
    for _, container in containers():
        command, options = conveyor_command(container["args"])
        kinds.add(command)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if command == "scheduler":  # serves no HTTP: nothing to probe
            assert "livenessProbe" not in container
            continue
        live = container["livenessProbe"]["httpGet"]
        ready = container["readinessProbe"]["httpGet"]
        assert (live["path"], ready["path"]) == ("/health/live", "/health/ready")
        for probe in (live, ready):
            assert await serves(command, probe["path"])
            assert ports[probe["port"]] == listen_port(command, options)
    assert kinds == {"api", "worker", "scheduler"}


def prestop_seconds(container: dict[str, Any]) -> float:
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    return float(cmd[1])


@pytest.mark.parametrize("kind", ["worker", "api"])
def test_kubernetes_grace_period_outlasts_prestop_and_shutdown(kind: str) -> None:
    for pod, container in containers():
        command, options = conveyor_command(container["args"])
        if command != kind:
            continue
        budget = prestop_seconds(container)
        if command == "worker":
            budget += float(options.get("--shutdown-timeout", DEFAULTS.shutdown_timeout))
        assert pod["terminationGracePeriodSeconds"] > budget


# --- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_entrypoint_ports_and_copied_paths_exist() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert entrypoint == 'ENTRYPOINT ["conveyor"]'
    exposed = {int(p) for line in lines if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert exposed == {DEFAULTS.api_port, DEFAULTS.health_port}
    for line in lines:
        if line.startswith("COPY"):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
