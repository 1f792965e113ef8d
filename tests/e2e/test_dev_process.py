"""``jetledger dev`` as a real child process: start, drive it with the CLI, crash a service,
SIGTERM, restart on the same data, ``kill -9`` — and never an orphan process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from services.cli.main import main
from services.dev.ports import all_ports
from services.dev.state import DataDir, is_alive
from services.localservers import free_port
from services.settings import ENV_PREFIX, Settings

pytestmark = pytest.mark.timeout(180)

JETLEDGER = str(Path(sys.executable).parent / "jetledger")


def dev_env(data_dir: Path) -> dict[str, str]:
    """Our environment with no JETLEDGER_* of its own: a data dir and free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
    for use in all_ports(Settings()):
        env[use.env_var] = str(free_port())
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return env


class Dev:
    """One ``jetledger dev`` process and its output."""

    started: ClassVar[list[Dev]] = []  # stopped by the ``no_leftovers`` fixture, pass or fail

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = DataDir(Path(env[f"{ENV_PREFIX}DATA_DIR"]))

    def start(self) -> Dev:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [JETLEDGER, "dev"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        Dev.started.append(self)
        self.wait_for("jetledger dev is up", 90)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while text not in self.output():
            assert self.proc is not None and self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()}"
            time.sleep(0.1)

    def children(self) -> dict[str, int]:
        state = self.data.read_state()
        assert state is not None
        return {child.name: child.pid for child in state.children}

    def signal(self, sig: int, within: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(within)


def gone(pids: set[int], within: float = 15) -> bool:
    """Wait until none of ``pids`` is alive."""
    deadline = time.monotonic() + within
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(is_alive(pid) for pid in pids)


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Stop every ``jetledger dev`` a test started, even when it failed half-way."""
    yield
    while Dev.started:
        dev = Dev.started.pop()
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGTERM)
            try:
                dev.proc.wait(60)
            except subprocess.TimeoutExpired:
                dev.proc.kill()  # its services follow it (PDEATHSIG)
                dev.proc.wait(10)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    environment = dev_env(tmp_path / "data")
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    return environment


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def retry(capsys: pytest.CaptureFixture[str], *argv: str, within: float = 30) -> Any:
    """Run a command until it succeeds (a restarted service takes a moment to serve)."""
    deadline = time.monotonic() + within
    while True:
        capsys.readouterr()
        code = main([*argv, "--json"])
        out, err = capsys.readouterr()
        if code == 0:
            return json.loads(out)
        assert time.monotonic() < deadline, err
        time.sleep(0.2)


def test_dev_runs_supervises_stops_restarts_and_leaves_no_orphans(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = Dev(env, tmp_path / "dev.out").start()
    first = dev.children()
    assert set(first) == {"card", "transaction", "ledger", "notification", "nats", "postgres"}
    check_endpoints(dev, env)
    cli_json(capsys, "card", "issue", "alice", "--name", "Alice", "--last4", "4242")
    cli_json(capsys, "tx", "fund", "alice", "50.00")
    bought = cli_json(capsys, "tx", "create", "alice", "12.50", "--merchant", "coffee")
    seq = bought["stream_sequence"]
    balance = cli_json(capsys, "balance", "alice", "--at-least-seq", seq)
    assert balance["balances"][0]["posted"] == "3750"
    # Service logs are JSON on disk and readable lines in the terminal.
    dev.wait_for("Purchase of 12.50 USD at coffee")
    assert json.loads(dev.data.logs.joinpath("card.log").read_text().splitlines()[0])

    # A crashed service is reported and restarted with its backoff.
    os.kill(first["transaction"], signal.SIGKILL)
    dev.wait_for("transaction exited unexpectedly (signal SIGKILL)")
    dev.wait_for("transaction restarted")
    retry(capsys, "tx", "create", "alice", "2.50", "--merchant", "coffee", "--id", "after-crash")
    assert dev.children()["transaction"] != first["transaction"]
    # So is NATS: it comes back on its port with its data, and the services reconnect.
    os.kill(first["nats"], signal.SIGKILL)
    dev.wait_for("NATS exited (signal SIGKILL)")
    retry(capsys, "tx", "create", "alice", "1.00", "--merchant", "coffee", "--id", "after-nats")
    seen = set(first.values()) | set(dev.children().values())

    # SIGTERM: everything stops in order, exit 0, no process left, the state file removed.
    assert dev.signal(signal.SIGTERM) == 0
    assert gone(seen), [pid for pid in seen if is_alive(pid)]
    assert dev.data.read_state() is None and "stopped; data kept" in dev.output()

    # Restart on the same data: the card, its money and its events are still there.
    dev = Dev(env, tmp_path / "dev2.out").start()
    assert cli_json(capsys, "card", "get", "alice")["posted"] == "3400"  # NATS kept the stream
    consuming = [
        line for line in dev.data.logs.joinpath("ledger.log").read_text().splitlines()
        if '"projection reading"' in line
    ]  # fmt: skip
    assert json.loads(consuming[-1])["after"] > 0  # Postgres kept the projection: no replay
    capsys.readouterr()
    assert main(["events", "tail", "--subject", "card.alice", "--json"]) == 0  # URLs: dev.json
    events = [json.loads(line)["event"]["type"] for line in capsys.readouterr().out.splitlines()]
    assert events == ["card.issued.v1", "card.funded.v1", *["transaction.created.v1"] * 3]
    again = cli_json(capsys, "tx", "create", "alice", "2.50", "--merchant", "coffee", "--id",
                     "after-crash")  # fmt: skip
    assert again["replayed"] is True

    # kill -9 of the supervisor: the kernel kills its services (PDEATHSIG); NATS and Postgres
    # get SIGTERM the same way and exit once the services' connections are gone.
    second = set(dev.children().values())
    assert dev.signal(signal.SIGKILL) == -signal.SIGKILL
    assert gone(second), [pid for pid in second if is_alive(pid)]


def check_endpoints(dev: Dev, env: dict[str, str]) -> None:
    """dev.json names every endpoint, dev.env exports what a client and a scraper need, and the
    start-up listing shows each URL whole (rich writes 80 columns when not on a terminal)."""
    state = dev.data.read_state()
    assert state is not None
    endpoints = state.endpoints
    services = ("card", "transaction", "ledger", "notification")
    expected = {*services, *(f"{s}_metrics" for s in services), "nats", "nats_monitor", "postgres"}
    assert set(endpoints) == expected
    for service in services:
        port = env[f"{ENV_PREFIX}{service.upper()}_PORT"]
        metrics = env[f"{ENV_PREFIX}{service.upper()}_METRICS_PORT"]
        assert endpoints[service] == f"127.0.0.1:{port}"
        assert endpoints[f"{service}_metrics"] == f"http://127.0.0.1:{metrics}/metrics"
    assert endpoints["nats"] == state.settings["nats_url"] and endpoints["nats"].startswith(
        "nats://"
    )
    assert endpoints["postgres"] == state.settings["database_url"]
    # The endpoints answer: metrics are scraped, the NATS monitor reports durable acks.
    assert all(
        endpoints[k].startswith("http://") for k in expected if k.endswith(("_metrics", "_monitor"))
    )
    with urllib.request.urlopen(endpoints["ledger_metrics"], timeout=10) as reply:  # noqa: S310
        assert b"jetledger_" in reply.read()
    varz = endpoints["nats_monitor"] + "/varz"
    with urllib.request.urlopen(varz, timeout=10) as reply:  # noqa: S310
        assert json.loads(reply.read())["jetstream"]["config"]["sync_always"] is True

    # dev.env, sourced by a shell, gives the same endpoints as JETLEDGER_* variables.
    shown = subprocess.run(
        ["bash", "-c", f"source {dev.data.env_file} && env"],
        env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    variables = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert variables[f"{ENV_PREFIX}NATS_URL"] == endpoints["nats"]
    assert variables[f"{ENV_PREFIX}DATABASE_URL"] == endpoints["postgres"]
    assert variables[f"{ENV_PREFIX}NATS_MONITOR_URL"] == endpoints["nats_monitor"]
    for service in services:
        for kind in ("PORT", "METRICS_PORT"):
            name = f"{ENV_PREFIX}{service.upper()}_{kind}"
            assert variables[name] == env[name], name

    # The start-up listing: every endpoint whole on its line, the long Postgres URL included.
    listing = dev.output()
    assert len(endpoints["postgres"]) > 40
    for address in endpoints.values():
        assert address in listing, f"{address} is cut or missing in:\n{listing}"


def test_a_taken_port_is_one_clear_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    port = int(env["JETLEDGER_LEDGER_METRICS_PORT"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code = main(["dev"])
    err = capsys.readouterr().err.strip()
    assert code == 6 and len(err.splitlines()) == 1
    assert f"port {port} (ledger metrics)" in err and "JETLEDGER_LEDGER_METRICS_PORT" in err


def test_one_dev_system_per_data_directory(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    holder = DataDir(Path(env["JETLEDGER_DATA_DIR"]))
    holder.lock()
    try:
        assert main(["dev"]) == 6
    finally:
        holder.unlock()
    assert "another `jetledger dev`" in capsys.readouterr().err


def test_leftovers_of_a_crashed_run_are_stopped_but_never_strangers(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.lock()
    ours = subprocess.Popen(["sleep", "60"])
    stranger = subprocess.Popen(["sleep", "61"])
    try:
        from services.dev.state import Child, DevState, cmdline_of

        # Right after the fork the child may still show the parent's command line: wait for exec.
        deadline = time.monotonic() + 10
        while cmdline_of(ours.pid) != ["sleep", "60"] and time.monotonic() < deadline:
            time.sleep(0.01)
        children = [
            Child("ours", ours.pid, cmdline_of(ours.pid) or []),
            Child("reused pid", stranger.pid, ["python", "-m", "services.card.main"]),
        ]
        data.write_state(DevState(pid=1, started_at=0.0, children=children), Settings())
        stopped = data.reap_leftovers()
        assert [c.name for c in stopped] == ["ours"]
        assert ours.wait(5) == -signal.SIGTERM and stranger.poll() is None
        assert data.read_state() is None
    finally:
        stranger.kill()
        stranger.wait()
        ours.kill()
        ours.wait()
        data.unlock()
