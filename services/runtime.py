"""What every service process shares: logging, the gRPC server with health and reflection,
Prometheus metrics, and graceful shutdown on SIGTERM/SIGINT.

Shutdown order (issue 3; docs/architecture.md, invariant 10 for the status codes): health goes NOT_SERVING first (load balancers stop
routing), in-flight RPCs drain within a grace period, then the service's own resources close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from eventstore.loop import run_loop, tune_gc
from services.grpc_errors import StatusBoundary
from services.observability.interceptor import ObservingInterceptor
from services.observability.logs import ContextFilter, JsonFormatter
from services.observability.metrics import register_platform_collectors, rpc_metrics
from services.observability.tracing import setup_tracing
from services.security.config import ServerSecurity
from services.settings import Settings

log = logging.getLogger("jetledger")


def setup_logging(service: str, fmt: str = "json", level: str = "INFO") -> None:
    """Configure the root logger: JSON lines for services, plain text for people."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    handler.addFilter(ContextFilter())
    # Neither format names the calling file, line, thread or process: skip gathering them, as the
    # logging HOWTO's "Optimization" section says. -24 % of a log call (62 -> 47 µs), which counts
    # where a line is a product: the notification service writes one per notification.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class GrpcService:
    """One gRPC service to host: its full name, its add-to-server function and its servicer."""

    name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass
class Runtime:
    """A running gRPC server with health, reflection and a metrics endpoint."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    names: Sequence[str]
    port: int
    metrics_port: int | None
    registry: CollectorRegistry | None = None  # the service's metrics (tests read them directly)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register a coroutine to run after RPCs have drained (close pools, connections)."""
        self._closers.append(closer)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the server and every hosted service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING, drain in-flight RPCs for up to ``grace`` seconds, then close resources."""
        await self.set_serving(False)
        await self.server.stop(grace)
        for closer in reversed(self._closers):
            # A closer that hangs (a drain on a dead connection) must not keep the process alive.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closer(), CLOSER_TIMEOUT)


async def start_grpc(
    services: Iterable[GrpcService],
    host: str,
    port: int,
    *,
    metrics_port: int | None = None,
    registry: CollectorRegistry | None = None,
    options: Sequence[tuple[str, Any]] = (),
    security: ServerSecurity | None = None,
    health_port: int = 0,
) -> Runtime:
    """Start an asyncio gRPC server hosting ``services`` plus health and reflection.

    With ``security`` the server listens with TLS only and every call passes its access
    interceptor; without it (``JETLEDGER_SECURITY=off``) it is plaintext and open. A
    ``health_port`` (``JETLEDGER_HEALTH_PORT``) serves plaintext health alone, for probes.
    """
    if registry is None:
        registry = CollectorRegistry()  # not exposed: the interceptor still needs one
    register_platform_collectors(registry)
    defaults = [("grpc.max_receive_message_length", 8 * 1024 * 1024), ("grpc.so_reuseport", 0)]
    given = {key for key, _ in options}  # gRPC takes the first of repeated keys: callers win
    # Observed outermost, so refused calls (UNAUTHENTICATED, PERMISSION_DENIED) are counted too;
    # then access (an unauthenticated caller learns nothing, not even that its bytes were bad);
    # then the status boundary around the servicer (it supplies the deserializer).
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ObservingInterceptor(rpc_metrics(registry)),
        *(security.interceptors if security is not None else ()),
        StatusBoundary(),
    ]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[*(d for d in defaults if d[0] not in given), *options],
    )
    services = list(services)
    for svc in services:
        svc.add(svc.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [svc.name for svc in services]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{host}:{port}"
    if security is None:
        log.warning("security is off: plaintext gRPC, no authentication", extra={"port": port})
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, security.credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    if metrics_port is not None:
        start_http_server(metrics_port, addr=host, registry=registry)
    runtime = Runtime(server, health_servicer, names, bound, metrics_port, registry)
    if health_port:
        # Kubernetes' gRPC probes cannot speak TLS: they ask this plaintext port, which serves
        # grpc.health.v1 alone (the same statuses; health answers anyone anyway) and nothing else.
        probes = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probes)
        if probes.add_insecure_port(f"{host}:{health_port}") == 0:
            raise OSError(f"cannot listen on {host}:{health_port}")
        await probes.start()
        runtime.on_close(lambda: probes.stop(0))
    await runtime.set_serving(True)
    log.info("serving", extra={"services": names, "port": bound, "metrics_port": metrics_port})
    return runtime


async def wait_for_shutdown_signal() -> None:
    """Return when SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


DRAIN_GRACE: Final = 5.0  # in-flight RPCs get this long to finish after SIGTERM
CLOSER_TIMEOUT: Final = 3.0  # each resource's close, after the drain
SHUTDOWN_DEADLINE: Final = 15.0  # then the process exits whatever is still running


def _exit_by(deadline: float, service: str) -> None:
    """Make sure the process is gone ``deadline`` seconds from now, even if its loop is stuck.

    A thread, not the event loop: a loop starved by CPU work or blocked in a call would never run
    a timer of its own. 15 s is within every grace we deploy with (kustomize: 30 s minus a 5 s
    preStop; ``jetledger dev``: 15 s before SIGKILL).
    """

    def force() -> None:
        log.error("shutdown did not finish in time: exiting now", extra={"service": service})
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(deadline, force)
    timer.daemon = True
    timer.start()


def until_shutdown(
    service: str, deadline: float = SHUTDOWN_DEADLINE
) -> Callable[[], Coroutine[Any, Any, None]]:
    """An ``until`` for a service's serve loop: return at SIGTERM/SIGINT, having armed the watchdog
    that ends the process ``deadline`` seconds later, whatever is still running then."""

    async def until() -> None:
        await wait_for_shutdown_signal()
        _exit_by(deadline, service)

    return until


def run_service(service: str, serve: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Entry point of a service process: settings from the environment, logging and tracing
    configured, the collector tuned (``tune_gc``), ``serve(settings)`` on the services' loop;
    spans still batched are flushed at the end."""
    settings = Settings.from_env()
    setup_logging(service, settings.log_format, settings.log_level)
    tracing = setup_tracing(service, settings)
    tune_gc()
    try:
        run_loop(serve(settings))
    finally:
        if tracing is not None:
            tracing.shutdown()


def run_until_signal(service: str, start: Callable[[Settings], Awaitable[Runtime]]) -> None:
    """Entry point of a gRPC-only service: start it, serve until SIGTERM/SIGINT, drain, stop."""

    async def serve(settings: Settings) -> None:
        runtime = await start(settings)
        await until_shutdown(service)()
        await runtime.stop(DRAIN_GRACE)

    run_service(service, serve)
