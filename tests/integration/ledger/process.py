"""Run ``python -m services.ledger.main`` as a real child process (for kill -9 fault tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.support import prepare_for
from contracts.subjects import StreamNames
from services.localservers import free_port


@dataclass
class LedgerProcess:
    """One ledger service process; ``env`` adds JETLEDGER_* settings (e.g. the fault hook)."""

    nats_url: str
    database_url: str
    streams: StreamNames
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> LedgerProcess:
        """Start the process and (by default) wait until its health reports SERVING."""
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        env = {
            **os.environ,
            "JETLEDGER_NATS_URL": self.nats_url,
            "JETLEDGER_DATABASE_URL": self.database_url,
            "JETLEDGER_STREAM": self.streams.source,
            "JETLEDGER_DERIVED_STREAM": self.streams.derived,
            "JETLEDGER_SUBJECT_PREFIX": self.streams.subjects.prefix,
            "JETLEDGER_LEDGER_PORT": str(self.port),
            "JETLEDGER_LEDGER_METRICS_PORT": str(self.metrics_port),
            "JETLEDGER_LOG_LEVEL": "INFO",
            "JETLEDGER_SECURITY": "off",  # the session's plain NATS
            **self.env,
        }
        prepare_for("services.ledger.main", env)  # provision + migrate, as the Jobs do
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.ledger.main"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_health(serving=True)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self) -> int | None:
        """Return the overall health status, or None when the server does not answer."""
        with grpc.insecure_channel(self.target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status)
            except grpc.RpcError:
                return None

    def wait_health(self, serving: bool, within: float = 20.0) -> None:
        """Wait until health reports SERVING (or NOT_SERVING)."""
        want = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        deadline = time.monotonic() + within
        while self.health() != want:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ledger exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ledger health never became {want}:\n{self.log()}")
            time.sleep(0.05)

    def wait_exit(self, within: float = 30.0) -> int:
        """Wait for the process to end (e.g. killed by its fault hook); return its status."""
        assert self.proc is not None
        return self.proc.wait(within)

    def signal(self, sig: int) -> None:
        """Send a signal to the process (SIGKILL, SIGSTOP, SIGCONT, SIGTERM)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def metric(self, name: str) -> float | None:
        """Return the value of an unlabelled metric from the process's /metrics endpoint."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def log(self) -> str:
        """The process's output so far (last 60 lines)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])
        return ""
