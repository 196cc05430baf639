"""The shipped Prometheus rules and Grafana dashboard use metric names that exist.

A renamed metric silently blanks a dashboard panel and disarms an alert: nothing errors,
the line just goes flat. These tests parse both files, pull out every `conveyor_*` name
and check it against what `conveyor.metrics.Metrics` really exports, and check the other
way too: every metric in `METRICS` is charted or alerted on somewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from conveyor.breaker import CircuitBreaker
from conveyor.engines import QueueCounts
from conveyor.metrics import METRICS, Metrics
from conveyor.relay import Relay

OPS = Path(__file__).resolve().parents[2] / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "conveyor.json"
NAME = re.compile(r"\bconveyor_[a-z_]+")
# Series a histogram or counter family exports besides its own name.
SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def exported_names() -> set[str]:
    """Every sample name a worker exports once it has recorded an outcome of each kind
    (labelled counters only appear after their first increment) and one depth sample."""
    metrics = Metrics()
    for kind in ("complete", "fail", "retry", "release", "defer"):
        metrics.record_outcome(kind, "mail", "mail.send", 0.2)
    metrics.record_depths([QueueCounts("mail", pending=3, failed=1, oldest_pending_ms=0)], 5_000)
    metrics.record_breakers([CircuitBreaker("smtp")])
    text = metrics.exposition().decode()
    # The outbox relay's own registry (built without connecting to anything).
    relay = Relay("postgresql://127.0.0.1/db", "memory://")
    relay.relayed.inc()
    text += generate_latest(relay.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def family(name: str) -> str:
    """`conveyor_job_duration_seconds_bucket` -> `job_duration_seconds` (its METRICS key)."""
    base = name.removeprefix("conveyor_")
    if base in METRICS:
        return base
    for suffix in SUFFIXES:
        if base.endswith(suffix) and base.removesuffix(suffix) in METRICS:
            return base.removesuffix(suffix)
    return base


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, str]]:
    """The alert rules, read without a YAML library (not a dependency): each rule is the
    block from one `- alert:` line to the next, with its `expr` (inline or `|` block),
    `for`, `severity` and `summary`."""
    rules: list[dict[str, str]] = []
    block: list[str] = []
    for line in [*ALERTS.read_text().splitlines(), "      - alert: END"]:
        if line.strip().startswith("- alert:"):
            if block:
                rules.append(_rule(block))
            block = [line]
        elif block and not line.strip().startswith("#"):
            block.append(line)
    return rules


def _rule(lines: list[str]) -> dict[str, str]:
    rule: dict[str, str] = {"alert": lines[0].split(":", 1)[1].strip()}
    for i, line in enumerate(lines):
        key, _, value = line.strip().partition(":")
        if key in ("expr", "for", "severity", "summary") and key not in rule:
            if value.strip() == "|":  # a block scalar: the following, deeper-indented lines
                indent = len(line) - len(line.lstrip())
                body = []
                for nxt in lines[i + 1 :]:
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    body.append(nxt.strip())
                value = " ".join(b for b in body if b)
            rule[key] = value.strip().strip('"')
    return rule


def test_every_name_in_the_alert_rules_is_exported() -> None:
    used = set(NAME.findall(ALERTS.read_text()))
    assert used, "no conveyor_ metric found in alerts.yml"
    missing = used - exported_names()
    assert not missing, f"alerts.yml uses metrics nobody exports: {sorted(missing)}"


def test_every_name_in_the_dashboard_is_exported() -> None:
    used = set(NAME.findall(DASHBOARD.read_text()))
    assert used, "no conveyor_ metric found in the dashboard"
    missing = used - exported_names()
    assert not missing, f"conveyor.json uses metrics nobody exports: {sorted(missing)}"


def test_every_exported_metric_is_charted_or_alerted_on() -> None:
    used = {family(n) for n in NAME.findall(ALERTS.read_text() + DASHBOARD.read_text())}
    unused = set(METRICS) - used
    assert not unused, f"metrics neither charted nor alerted on: {sorted(unused)}"


def test_name_check_catches_a_drifted_name() -> None:
    """The guard itself: a misspelt name is not in the exported set."""
    exported = exported_names()
    assert "conveyor_jobs_processed_total" in exported
    assert "conveyor_job_duration_seconds_bucket" in exported
    assert "conveyor_jobs_processed" not in exported  # counters end in _total
    assert "conveyor_job_duration_seconds" not in exported  # histograms: _bucket/_sum/_count


def test_alert_rules_cover_the_runbook_alerts() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for rule in rules.values():
        assert {"expr", "severity", "summary"} <= set(rule), rule
        assert rule["severity"] in ("critical", "warning", "info"), rule
    assert rules["ConveyorWorkerDown"]["expr"] == 'up{job="conveyor-worker"} == 0'
    assert rules["ConveyorEngineDown"]["expr"] == "conveyor_engine_up == 0"
    assert "conveyor_dead_letter_depth" in rules["ConveyorDeadLetterDepthHigh"]["expr"]
    assert "conveyor_oldest_pending_age_seconds" in rules["ConveyorBacklogStale"]["expr"]
    assert 'conveyor_queue_depth{state="pending"}' in rules["ConveyorBacklogDeep"]["expr"]
    assert "conveyor_circuit_state" in rules["ConveyorCircuitOpen"]["expr"]
    failure = rules["ConveyorFailureRateHigh"]["expr"]
    assert "rate(conveyor_jobs_failed_total[5m])" in failure
    assert "rate(conveyor_jobs_processed_total[5m])" in failure
    # Queue gauges come from every worker: summing them would multiply the backlog.
    for rule in rules.values():
        for gauge in ("queue_depth", "dead_letter_depth", "oldest_pending_age_seconds"):
            if f"conveyor_{gauge}" in rule["expr"]:
                assert "max by (queue)" in rule["expr"], rule


def test_dashboard_has_the_panels_operators_need() -> None:
    doc = dashboard()
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"]), "panel ids must be unique"
    assert all(p["targets"] and p["title"] for p in panels)
    exprs = " ".join(dashboard_exprs())
    assert "rate(conveyor_jobs_processed_total" in exprs  # throughput
    assert "rate(conveyor_jobs_failed_total" in exprs  # failures
    assert (
        "histogram_quantile(0.95, sum by (queue, le) (rate(conveyor_job_duration_seconds_bucket"
        in exprs
    )
    assert "max by (queue, state) (conveyor_queue_depth" in exprs  # depth by state
    assert "conveyor_dead_letter_depth" in exprs
    assert "conveyor_jobs_in_flight" in exprs and "conveyor_concurrency_limit" in exprs
    assert "conveyor_oldest_pending_age_seconds" in exprs
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "job", "queue"} <= variables
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_promtool_accepts_the_rules() -> None:
    if not shutil.which("promtool"):
        pytest.fail("promtool is not installed (Debian: prometheus); run scripts/test")
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_runbook_names_only_tests_that_exist() -> None:
    """docs/runbook.md maps each runbook step to a test: a renamed or deleted test must
    not leave the page claiming coverage that is gone."""
    root = OPS.parent
    text = (root / "docs" / "runbook.md").read_text()
    ref = re.compile(r"(tests/[\w/]+\.py|\bops)?::(test_\w+)")
    missing, seen = [], 0
    for line in text.splitlines():
        current = None  # `, ::name` continues the file named before it on the same line
        for path, name in ref.findall(line):
            if path:
                current = "tests/acceptance/test_cli_ops.py" if path == "ops" else path
            assert current, f"test {name} has no file before it: {line}"
            seen += 1
            source = root / current
            if not source.exists() or not re.search(
                rf"^(async )?def {name}\(", source.read_text(), re.M
            ):
                missing.append(f"{current}::{name}")
    assert seen > 50, "the runbook map lost its test references"
    assert not missing, f"docs/runbook.md names tests that do not exist: {missing}"
