"""The monitoring component against a running jetledger: every PromQL expression of its alert
rules and its Grafana dashboard parses (a real PromQL parser), and every metric it names is one
the running system exports: the four services' endpoints (scraped from real processes after
driving traffic through them), the verify run's result file, and NATS's server data under the
names prometheus-nats-exporter gives them. A rule on a misspelt or never-exported series would
never fire: this is what catches it."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.cli.main import main
from services.dev import DevSystem
from services.localservers import Servers
from tests.e2e.test_cli_commands import client_env, isolated_system
from tests.notifykit import WebhookReceiver

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "ops" / "kustomize" / "components" / "monitoring"
SERVICES = ("card", "transaction", "ledger", "notification")
# Labels Prometheus adds to every scraped series (target labels), not the exporters.
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "container"})
NATS_PREFIX = "nats"

Series = dict[str, set[str]]  # metric name -> label names seen on it


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard target."""
    found: list[tuple[str, str]] = []
    rules = yaml.safe_load((MONITORING / "prometheusrules.yaml").read_text())
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            found.append((f"rule {rule['alert']}", rule["expr"]))
    dashboard = json.loads((MONITORING / "dashboards" / "jetledger.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """The (metric name, label names matched) of every vector selector in ``expr``."""
    out: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers} - {"__name__"}
            assert node.name, f"a selector without a metric name in {expr}"
            out.append((node.name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return out


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return parse_exposition(response.read().decode())


def parse_exposition(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
        series.setdefault(family.name, set())  # a family with no sample yet still exists
    return series


def nats_exporter_names(varz: dict[str, Any], prefix: str = f"{NATS_PREFIX}_varz") -> set[str]:
    """The gauges prometheus-nats-exporter makes of /varz: every numeric field, nested keys
    joined by ``_`` under ``<prefix>_varz_``."""
    names: set[str] = set()
    for key, value in varz.items():
        name = f"{prefix}_{key}"
        if isinstance(value, dict):
            names |= nats_exporter_names(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            names.add(name)
    return names


@pytest.fixture(scope="module")
def system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    with isolated_system(
        servers,
        tmp_path_factory.mktemp("monitoring"),
        webhook_allow_networks="127.0.0.0/8",
        webhook_max_attempts=1,
    ) as running:
        yield running


def cli(*argv: str) -> int:
    return main(list(argv))


def drive(system: DevSystem, hook_url: str) -> None:
    """Traffic that makes every labelled family the monitoring uses show up."""
    assert cli("card", "issue", "mon-alice", "--name", "Alice Example", "--last4", "4242") == 0
    assert (
        cli(
            "notifications", "webhook", "--card", "mon-alice", "--endpoint", "e1", "--url", hook_url
        )
        == 0
    )
    assert cli("tx", "fund", "mon-alice", "100.00", "--id", "mon-topup") == 0
    assert cli("tx", "create", "mon-alice", "1.00", "--merchant", "m", "--id", "mon-ok") == 0
    # over the limit: a decline (exit 1, a recorded outcome)
    cli("tx", "create", "mon-alice", "999999.00", "--merchant", "m", "--id", "mon-declined")


def test_every_rule_and_panel_parses_and_uses_exported_series(
    system: DevSystem,
    servers: Servers,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for key, value in client_env(system.settings).items():
        monkeypatch.setenv(key, value)
    settings = system.settings
    with WebhookReceiver(lambda _id, _n: (500, 0.0)).running() as hook:  # every attempt fails
        drive(system, hook.url)
        notification = f"http://{settings.host}:{settings.notification_metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while not _dead_lettered(notification):
            assert time.monotonic() < deadline, "no webhook was dead-lettered"
            time.sleep(0.5)
    verify_file = tmp_path / "verify.prom"
    assert cli("verify", "--metrics-file", str(verify_file)) == 0

    exported: Series = {}
    for name in SERVICES:
        port = getattr(settings, f"{name}_metrics_port")
        for metric, labels in scrape(f"http://{settings.host}:{port}/metrics").items():
            exported.setdefault(metric, set()).update(labels)
    for metric, labels in parse_exposition(verify_file.read_text()).items():
        exported.setdefault(metric, set()).update(labels)
    nats_server = system.nats or servers.nats  # the system's own NATS, else the session's
    assert nats_server is not None, "a local NATS whose monitor port we can read"
    with urllib.request.urlopen(f"{nats_server.monitor_url}/varz", timeout=10) as response:  # noqa: S310
        nats_names = nats_exporter_names(json.loads(response.read()))
    for metric in nats_names:
        exported.setdefault(metric, set())

    problems: list[str] = []
    used: set[str] = set()
    for where, expr in expressions():
        for metric, labels in selectors(expr):
            used.add(metric)
            if metric not in exported:
                problems.append(f"{where}: {metric} is not exported")
            elif not metric.startswith(f"{NATS_PREFIX}_"):
                missing = labels - exported[metric] - TARGET_LABELS
                if missing:
                    problems.append(f"{where}: {metric} has no label {sorted(missing)}")
    assert problems == []
    # the monitoring covers what the issue asks for
    assert {
        "jetledger_grpc_server_handled_total",
        "jetledger_command_declines_total",
        "jetledger_projection_lag_seconds",
        "jetledger_projection_stopped",
        "jetledger_notification_dead_letters_total",
        "jetledger_command_conflicts_total",
        "nats_varz_jetstream_stats_storage",
        "jetledger_verify_success",
    } <= used


def _dead_lettered(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    match = re.search(r"^jetledger_notification_dead_letters_total (\S+)$", text, re.M)
    return match is not None and float(match.group(1)) > 0


def test_the_parser_rejects_a_broken_expression() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - the binding raises a plain exception
        promql_parser.parse("sum(rate(jetledger_commands_total[5m])")
    assert selectors('sum(rate(a_total{x="1"}[5m])) / b') == [("a_total", {"x"}), ("b", set())]
