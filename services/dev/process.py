"""One service as a supervised child process: start, health, restart with backoff, stop."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Restart backoff: 0.5 s, 1 s, 2 s … up to 30 s; a service that stayed up this long starts over.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0


def backoff(failures: int) -> float:
    """Seconds to wait before restart number ``failures`` (1-based)."""
    return float(min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX))


def _find_prctl() -> Any:
    # Resolved once, in the parent: the forked child must not dlopen (another thread may hold
    # the loader's lock at fork time); it only calls the function.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the spawning thread ends (Linux ``PDEATHSIG``).

    So a ``kill -9`` of the supervisor leaves no orphan service behind. SIGKILL, not SIGTERM:
    with the supervisor gone nobody would escalate a shutdown that hangs (a service whose NATS
    and Postgres are stopping at the same moment can wait on them for ever), and the services
    are built to survive a kill at any point. Spawn from the main thread only: the signal
    follows the spawning *thread*, not the process.
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def describe_exit(returncode: int) -> str:
    """``status 1`` or ``signal SIGKILL``, for people."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
    return f"status {returncode}"


@dataclass
class ServiceProcess:
    """``python -m services.<name>.main`` with the system's environment, logging to a file."""

    name: str
    env: dict[str, str]
    log_path: Path
    address: str  # host:port of its gRPC server
    ca: Path | None = None  # with security on: the CA its TLS certificate is checked against
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    failures: int = 0  # consecutive crashes, for the backoff
    restarts: int = 0  # restarts during this run, for people
    restart_at: float | None = None  # when a crashed service is due to come back

    @property
    def module(self) -> str:
        return f"services.{self.name}.main"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def start(self) -> None:
        """Spawn the process (in its own session: a terminal's Ctrl-C reaches only the supervisor,
        which then stops the services in order)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        self.restart_at = None

    def exited(self) -> int | None:
        """The exit status if the process has ended, else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def serving(self, timeout: float = 1.0) -> bool:
        """Ask the gRPC health service whether the server reports SERVING."""
        channel = (
            grpc.insecure_channel(self.address)
            if self.ca is None
            else grpc.secure_channel(
                self.address, grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
            )
        )
        with channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs lack Check's type
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def terminate(self) -> None:
        """Ask the service to shut down gracefully (SIGTERM: drain RPCs, finish the batch)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic) for the process to end, then kill it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
