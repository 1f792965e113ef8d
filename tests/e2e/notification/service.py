"""Run the notification service as a real child process (``python -m services.notification.main``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.support import prepare_for
from contracts.subjects import StreamNames
from services.localservers import free_port


@dataclass
class ServiceProcess:
    """One notification service process; its JSON log lines go to ``log_path``."""

    nats_url: str
    database_url: str
    streams: StreamNames
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServiceProcess:
        """Start the process (same port on restarts) with ``extra_env`` over the base settings."""
        self.port = self.port or free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "JETLEDGER_NATS_URL": self.nats_url,
            "JETLEDGER_DATABASE_URL": self.database_url,
            "JETLEDGER_STREAM": self.streams.source,
            "JETLEDGER_DERIVED_STREAM": self.streams.derived,
            "JETLEDGER_SUBJECT_PREFIX": self.streams.subjects.prefix,
            "JETLEDGER_NOTIFICATION_PORT": str(self.port),
            "JETLEDGER_NOTIFICATION_METRICS_PORT": str(self.metrics_port),
            "JETLEDGER_WEBHOOK_BACKOFF_BASE_SECONDS": "0.05",
            "JETLEDGER_WEBHOOK_BACKOFF_MAX_SECONDS": "0.2",
            "JETLEDGER_WEBHOOK_TIMEOUT_SECONDS": "1.0",
            "JETLEDGER_SECURITY": "off",  # the session's plain NATS
            # the test receivers listen on loopback, which webhooks may not reach by default
            "JETLEDGER_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
            **self.extra_env,
            **extra_env,
        }
        prepare_for("services.notification.main", env)  # provision + migrate, as the Jobs do
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.notification.main"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    async def serving(self, within: float = 20.0) -> None:
        """Wait until the gRPC health check says SERVING."""
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type it as sync
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"notification service not serving; log:\n{self.log_path.read_text()}")

    async def exited(self, within: float = 20.0) -> int:
        """Wait for the process to exit on its own; return its exit status."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def metric(self, name: str) -> float:
        """Read one unlabelled sample from the process's /metrics endpoint (0 if absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for the graceful shutdown (SIGKILL if it hangs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
