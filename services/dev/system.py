"""``DevSystem``: NATS, Postgres and the four services on one machine, supervised, stopped cleanly.

Start order: lock the data directory, stop leftovers of a crashed run, check every service port
(fail before starting anything), start NATS and Postgres (or use the configured URLs, failing
fast when they cannot be reached), provision the streams (idempotent; the services would too, but
the projectors must not race the writers for it), then start the four services at once and wait
until each reports SERVING over gRPC health.
Stop order: the services (SIGTERM, grace, then SIGKILL), then NATS and Postgres. Every process is
a direct child whose pid we hold; nothing is ever signalled by name.

With security on, every credential comes from ``DATA/security`` (``services.security.local``):
nats-server requires TLS and a client certificate, one NATS user per service, the streams are
provisioned by the admin user, the services serve TLS with the access interceptor, and the
settings recorded for other terminals name the CA, the operator's token and the reader's NATS
certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Self

import psycopg

from contracts.errors import Unavailable
from eventstore import EventStore
from services.dev.logs import tail
from services.dev.ports import SERVICES, all_ports, check_free, is_free, service_ports
from services.dev.process import STABLE_AFTER, ServiceProcess, backoff, describe_exit
from services.dev.state import (
    Child,
    DataDir,
    DevState,
    ServerPorts,
    cmdline_of,
    rss_kib,
    tree_cpu_seconds,
)
from services.localservers import LocalNats, LocalPostgres, LocalServerError
from services.preflight import migrate
from services.security.local import (
    LocalCredentials,
    client_settings,
    ensure_local_credentials,
    nats_server_config,
    service_settings,
)
from services.settings import ENV_PREFIX, Settings
from services.wiring import connect_client

Notify = Callable[[str, str], None]  # (level, message)


class StartFailed(Unavailable):
    """The system could not be brought up (a service died or never reported SERVING)."""


def child_env(settings: Settings, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a service process: ours, with every ``JETLEDGER_*`` from ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for f in dataclasses.fields(settings):
        if f.name != "extra":
            env[ENV_PREFIX + f.name.upper()] = str(getattr(settings, f.name))
    for name, value in (overrides or {}).items():
        env[ENV_PREFIX + name.upper()] = value
    return env


def _ignore(level: str, message: str) -> None:
    del level, message


class DevSystem:
    """The whole system as child processes; use as a context manager or ``start()``/``stop()``."""

    def __init__(self, settings: Settings, *, fresh: bool = False, notify: Notify = _ignore):
        self.data = DataDir(settings.data_dir)
        self.settings = dataclasses.replace(settings, data_dir=self.data.root)
        self.fresh = fresh
        self.notify = notify
        self.nats: LocalNats | None = None
        self.postgres: LocalPostgres | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.credentials: LocalCredentials | None = None
        self._server_retry: dict[str, float] = {}
        self._locked = False
        self.started_at = 0.0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Self:
        """Bring everything up and return once every service reports SERVING."""
        self.started_at = time.monotonic()
        self.data.lock()
        self._locked = True
        try:
            leftovers = self.data.reap_leftovers()
            if leftovers:
                names = ", ".join(f"{c.name} (pid {c.pid})" for c in leftovers)
                self.notify("warning", f"stopped what an earlier run left running: {names}")
            if self.fresh:
                self.data.wipe()
            check_free(self.settings.host, all_ports(self.settings))
            self._secure()
            self._start_servers()
            asyncio.run(_provision(self._as_admin()))
            if self.postgres is None:
                _check_postgres(self.settings.database_url)
            # what the Kubernetes Jobs do: the services only check that it was done
            asyncio.run(migrate(self._as_admin()))
            for name in SERVICES:
                port = getattr(self.settings, f"{name}_port")
                secure = service_settings(self.credentials, name) if self.credentials else {}
                self.services[name] = ServiceProcess(
                    name,
                    child_env(self.settings, secure),
                    self.data.logs / f"{name}.log",
                    f"{self.settings.host}:{port}",
                    ca=self.credentials.ca if self.credentials else None,
                )
                self.services[name].start()
            self._record()
            self._wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _secure(self) -> None:
        """Make (or reuse) the local credentials, and become a client holding the operator's."""
        if not self.settings.security:
            return
        if self.settings.nats_url:
            raise StartFailed(
                "security on with an external NATS (JETLEDGER_NATS_URL): give each service its"
                " NATS certificate yourself, or let `jetledger dev` start NATS"
                " (or set JETLEDGER_SECURITY=off to debug)"
            )
        self.credentials = ensure_local_credentials(self.data.root / "security")
        clients = client_settings(self.credentials)
        strings: dict[str, object] = {k: v for k, v in clients.items() if k != "security"}
        self.settings = dataclasses.replace(self.settings, security=True, **strings)  # type: ignore[arg-type]

    def _as_admin(self) -> Settings:
        """These settings, as the NATS admin user (stream provisioning only)."""
        if self.credentials is None:
            return self.settings
        admin = self.credentials.nats["admin"]
        return dataclasses.replace(
            self.settings,
            nats_user="admin",
            nats_cert_file=str(admin.cert),
            nats_key_file=str(admin.key),
        )

    def _start_servers(self) -> None:
        host = self.settings.host
        known = self.data.read_server_ports()

        def reuse(port: int) -> int:
            # Same ports as last run when they are free, so URLs in other terminals stay valid.
            return port if port and is_free(host, port) else 0

        # Started from this (the main) thread on purpose: localservers sets PR_SET_PDEATHSIG,
        # which fires when the *thread* that spawned the server ends, not the process.
        try:
            if not self.settings.nats_url:
                self.nats = LocalNats(
                    store_dir=self.data.nats,
                    port=reuse(known.nats),
                    monitor_port=reuse(known.nats_monitor),
                    host=host,
                    server_name="jetledger-dev",
                    extra_config=(
                        nats_server_config(self.credentials, self.settings.streams)
                        if self.credentials
                        else ""
                    ),
                ).start()
            if not self.settings.database_url:
                self.postgres = LocalPostgres(
                    data_dir=self.data.postgres, port=reuse(known.postgres), host=host
                ).start()
        except (LocalServerError, OSError) as exc:
            what = "Postgres" if self.nats is not None or self.settings.nats_url else "NATS"
            raise StartFailed(f"{what} did not start: {exc}") from exc
        self.data.write_server_ports(
            ServerPorts(
                nats=self.nats.port if self.nats else known.nats,
                nats_monitor=self.nats.monitor_port if self.nats else known.nats_monitor,
                postgres=self.postgres.port if self.postgres else known.postgres,
            )
        )
        self.settings = dataclasses.replace(
            self.settings,
            nats_url=self.nats.url if self.nats else self.settings.nats_url,
            database_url=self.postgres.url if self.postgres else self.settings.database_url,
        )

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.services.values())
        while pending:
            for svc in list(pending):
                code = svc.exited()
                if code is not None:
                    lines = "\n".join(tail(svc.log_path, 12))
                    raise StartFailed(
                        f"the {svc.name} service exited with {describe_exit(code)} while"
                        f" starting; {svc.log_path} ends with:\n{lines}"
                    )
                if svc.serving(timeout=0.5):
                    pending.remove(svc)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise StartFailed(
                    f"{names} did not report SERVING within {timeout:.0f}s (logs in {self.data.logs})"
                )
            if pending:
                time.sleep(0.1)

    def _record(self) -> None:
        children = [
            Child(name, pid, cmdline_of(pid) or [], stop_signal=sig)
            for name, pid, sig in self._processes()
        ]
        state = DevState(
            pid=os.getpid(), started_at=time.time(), children=children, endpoints=self.endpoints()
        )
        self.data.write_state(state, self.settings)

    def _processes(self) -> list[tuple[str, int, int]]:
        found = [(s.name, s.pid, int(signal.SIGTERM)) for s in self.services.values() if s.pid]
        if self.nats and self.nats.pid:
            found.append(("nats", self.nats.pid, int(signal.SIGTERM)))
        if self.postgres and self.postgres.pid:
            found.append(("postgres", self.postgres.pid, int(signal.SIGINT)))
        return found

    # -- supervise --------------------------------------------------------------------------------

    def poll(self) -> None:
        """Supervise once: report a crashed service and restart it after its backoff."""
        now = time.monotonic()
        for svc in self.services.values():
            code = svc.exited()
            if code is None:
                if svc.failures and now - svc.started_at > STABLE_AFTER:
                    svc.failures = 0
            elif svc.restart_at is None:
                svc.failures += 1
                delay = backoff(svc.failures)
                svc.restart_at = now + delay
                self.notify(
                    "error",
                    f"{svc.name} exited unexpectedly ({describe_exit(code)});"
                    f" restarting in {delay:.1f}s (log: {svc.log_path})",
                )
            elif now >= svc.restart_at:
                self._restart(svc, now)
        self._poll_servers(now)

    def _restart(self, svc: ServiceProcess, now: float) -> None:
        try:
            check_free(self.settings.host, service_ports(self.settings, svc.name))
        except Unavailable as exc:
            svc.restart_at = now + backoff(svc.failures)
            self.notify("error", f"cannot restart {svc.name}: {exc}")
            return
        svc.start()
        svc.restarts += 1
        self._record()
        self.notify("warning", f"{svc.name} restarted (pid {svc.pid}, restart #{svc.restarts})")

    def _poll_servers(self, now: float) -> None:
        for name, server in (("NATS", self.nats), ("Postgres", self.postgres)):
            if server is None or server.proc is None or server.proc.poll() is None:
                continue
            due = self._server_retry.setdefault(name, now)
            if now < due:
                continue
            self.notify(
                "error", f"{name} exited ({describe_exit(server.proc.returncode)}); restarting"
            )
            try:
                server.start()
            except LocalServerError as exc:
                self._server_retry[name] = now + 5.0
                self.notify("error", f"{name} did not restart: {exc}")
                continue
            self._server_retry.pop(name, None)
            self._record()

    # -- inspect and stop -------------------------------------------------------------------------

    def endpoints(self) -> dict[str, str]:
        """Where everything listens, by name: ``card`` (gRPC), ``card_metrics``, …, ``nats``,
        ``nats_monitor`` (only for a NATS we started) and ``postgres``; dev.json records them."""
        s = self.settings
        found: dict[str, str] = {}
        for name in SERVICES:
            found[name] = f"{s.host}:{getattr(s, f'{name}_port')}"
            found[f"{name}_metrics"] = (
                f"http://{s.host}:{getattr(s, f'{name}_metrics_port')}/metrics"
            )
        found["nats"] = s.nats_url
        if self.nats is not None:
            found["nats_monitor"] = self.nats.monitor_url
        found["postgres"] = s.database_url
        return found

    def pids(self) -> dict[str, int]:
        """The pid of every process the system runs, by name."""
        return {name: pid for name, pid, _ in self._processes()}

    def rss(self) -> dict[str, int]:
        """Resident memory (KiB) of every live process, by name."""
        found = {name: rss_kib(pid) for name, pid in self.pids().items()}
        return {name: kib for name, kib in found.items() if kib is not None}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by every live process and its children, by name."""
        return tree_cpu_seconds(self.pids())

    @property
    def log_dir(self) -> Path:
        return self.data.logs

    def stop(self, grace: float = 15.0) -> None:
        """Stop the services (gracefully, then by force), then NATS and Postgres."""
        for svc in self.services.values():
            svc.terminate()
        deadline = time.monotonic() + grace
        for svc in self.services.values():
            svc.wait(deadline)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for server in (self.nats, self.postgres):
                if server is not None:
                    pool.submit(server.stop)
        if self._locked:
            self.data.clear_state()
            self.data.unlock()
            self._locked = False


def _check_postgres(url: str) -> None:
    """Fail in one line, within seconds, when a Postgres we did not start cannot be reached
    (the services would otherwise crash-loop on it until the start-up deadline)."""
    try:
        with psycopg.connect(url, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartFailed(
            f"cannot connect to Postgres: {reason.removeprefix('connection failed: ')}"
        ) from exc


async def _provision(settings: Settings) -> None:
    """Create or update the streams (idempotent), failing fast when NATS cannot be reached."""
    try:
        nc = await connect_client(settings, "dev")
    except Unavailable as exc:
        raise StartFailed(str(exc)) from exc
    try:
        await EventStore(nc, settings.streams).ensure_streams(
            replicas=settings.stream_replicas,
            duplicate_window=timedelta(seconds=settings.duplicate_window_seconds),
        )
    finally:
        await nc.close()
