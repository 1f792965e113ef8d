"""What a running ``jetledger dev`` records in its data directory, and how it is found again.

- ``dev.lock`` — an exclusive ``flock`` held for the run: one dev system per data directory;
- ``dev.json`` — the supervisor's pid, every child's pid and command line, the endpoints (gRPC,
  metrics, NATS and its monitor, Postgres) and the settings a client needs;
- ``dev.env`` — ``export JETLEDGER_…`` lines, so another terminal can ``source`` its way in;
- ``servers.json`` — the NATS and Postgres ports of the last run, reused so URLs stay stable.

A run that was killed with ``kill -9`` leaves ``dev.json`` behind; the next run kills the children
listed there, but only processes whose ``/proc/<pid>/cmdline`` still matches: never a stranger that
reused a pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shlex
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import msgspec

from contracts.errors import Unavailable
from services.settings import ENV_PREFIX, Settings

STATE_FILE = "dev.json"
ENV_FILE = "dev.env"
LOCK_FILE = "dev.lock"
SERVER_PORTS_FILE = "servers.json"

# The settings a client in another terminal needs to reach the system (and its metrics).
CLIENT_SETTINGS = (
    "nats_url",
    "database_url",
    "host",
    "card_port",
    "transaction_port",
    "ledger_port",
    "notification_port",
    "card_metrics_port",
    "transaction_metrics_port",
    "ledger_metrics_port",
    "notification_metrics_port",
    "stream",
    "derived_stream",
    "subject_prefix",
    # with security on: the CA, the operator's token, the reader's NATS certificate, the MAC keys
    "security",
    "tls_ca_file",
    "token_file",
    "nats_user",
    "nats_cert_file",
    "nats_key_file",
    "event_keys_file",
)
# The ones ``running_settings`` fills in for a command in another terminal.
_FOUND_SETTINGS = ("nats_url", "database_url", *CLIENT_SETTINGS[-7:])
# Endpoints that are not settings but that tools want as variables: the NATS monitor (its /varz
# proves `sync_interval: always`; tests/integration/test_varz.py reads this variable).
ENDPOINT_VARIABLES = {"nats_monitor": "NATS_MONITOR_URL"}


class Child(msgspec.Struct, frozen=True):
    """One process the dev system started."""

    name: str
    pid: int
    cmdline: list[str]
    stop_signal: int = int(signal.SIGTERM)  # Postgres: SIGINT (fast shutdown)


class DevState(msgspec.Struct):
    """The contents of ``dev.json``."""

    pid: int
    started_at: float
    children: list[Child] = msgspec.field(default_factory=list)
    # "card" (gRPC host:port), "card_metrics" (URL), … for each service, then "nats",
    # "nats_monitor" (a local NATS only) and "postgres": see ``DevSystem.endpoints``.
    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    settings: dict[str, str] = msgspec.field(default_factory=dict)


class ServerPorts(msgspec.Struct):
    """The contents of ``servers.json``."""

    nats: int = 0
    nats_monitor: int = 0
    postgres: int = 0


class AlreadyRunning(Unavailable):
    """Another ``jetledger dev`` holds the data directory."""


def cmdline_of(pid: int) -> list[str] | None:
    """The command line of a live process, or ``None`` when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    if not Path("/proc/self").exists():  # not Linux: existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process in KiB (``VmRSS``), or ``None`` when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU time (user + system, seconds) each named process and its live descendants have used.

    Descendants count because Postgres serves each connection from a child of the postmaster.
    Ended children count once their parent has waited for them (``cutime``/``cstime``). Read from
    ``/proc``: empty where there is none (not Linux)."""
    if not Path("/proc/self/stat").exists():
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[str, float] = {}
    for name, root in roots.items():
        if root not in used:
            continue
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += used.get(pid, 0.0)
            todo += children.get(pid, [])
        found[name] = total
    return found


class DataDir:
    """The dev system's files under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._lock: IO[str] | None = None

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILE

    def lock(self) -> None:
        """Take the directory's exclusive lock, or raise ``AlreadyRunning``."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = (self.root / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            owner = self.read_state()
            who = f" (pid {owner.pid})" if owner else ""
            raise AlreadyRunning(
                f"another `jetledger dev`{who} is using {self.root}: stop it first"
            ) from None
        self._lock = handle

    def unlock(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def wipe(self) -> None:
        """Delete the data of earlier runs (``--fresh``): only the subdirectories we create."""
        import shutil

        for path in (self.nats, self.postgres, self.logs):
            shutil.rmtree(path, ignore_errors=True)
        (self.root / SERVER_PORTS_FILE).unlink(missing_ok=True)

    def read_state(self) -> DevState | None:
        """The recorded state of a running (or crashed) dev system, if any."""
        with contextlib.suppress(OSError, msgspec.DecodeError):
            return msgspec.json.decode((self.root / STATE_FILE).read_bytes(), type=DevState)
        return None

    def write_state(self, state: DevState, settings: Settings) -> None:
        """Record the run (atomically: written aside, then renamed) and the env file."""
        state.settings = {name: str(getattr(settings, name)) for name in CLIENT_SETTINGS}
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        tmp.replace(self.root / STATE_FILE)
        variables = {name.upper(): value for name, value in state.settings.items()}
        for endpoint, variable in ENDPOINT_VARIABLES.items():
            if endpoint in state.endpoints:
                variables[variable] = state.endpoints[endpoint]
        lines = [
            f"export {ENV_PREFIX}{name}={shlex.quote(value)}" for name, value in variables.items()
        ]
        self.env_file.write_text("\n".join(lines) + "\n")

    def clear_state(self) -> None:
        """Forget the run (after a clean stop)."""
        (self.root / STATE_FILE).unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)

    def read_server_ports(self) -> ServerPorts:
        """The NATS and Postgres ports of the last run (zeros when unknown)."""
        with contextlib.suppress(OSError, msgspec.DecodeError):
            return msgspec.json.decode(
                (self.root / SERVER_PORTS_FILE).read_bytes(), type=ServerPorts
            )
        return ServerPorts()

    def write_server_ports(self, ports: ServerPorts) -> None:
        """Remember this run's NATS and Postgres ports for the next one."""
        (self.root / SERVER_PORTS_FILE).write_bytes(msgspec.json.encode(ports))

    def reap_leftovers(self) -> list[Child]:
        """Stop the children a crashed run left behind (only if their command line matches)."""
        state = self.read_state()
        if state is None:
            return []
        stopped = [c for c in state.children if cmdline_of(c.pid) == c.cmdline]
        for child in stopped:
            _signal(child.pid, child.stop_signal)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(is_alive(c.pid) for c in stopped):
            time.sleep(0.1)
        for child in stopped:
            if is_alive(child.pid) and cmdline_of(child.pid) == child.cmdline:
                _signal(child.pid, signal.SIGKILL)
        self.clear_state()
        return stopped


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def running_settings(settings: Settings) -> Settings:
    """Fill empty NATS/Postgres URLs from a live ``jetledger dev`` on ``settings.data_dir``."""
    if settings.nats_url and settings.database_url:
        return settings
    state = DataDir(settings.data_dir).read_state()
    if state is None or not is_alive(state.pid):
        return settings
    found: dict[str, object] = {}
    for name in _FOUND_SETTINGS:
        if name in state.settings and not getattr(settings, name):
            raw = state.settings[name]
            found[name] = raw.lower() == "true" if name == "security" else raw
    return dataclasses.replace(settings, **found)  # type: ignore[arg-type]
