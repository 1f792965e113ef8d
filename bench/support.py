"""Child-process helpers for the benchmarks (and the end-to-end tests, which re-use them)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from services.settings import Settings


def service_env(settings: Settings, **overrides: object) -> dict[str, str]:
    """Environment for a service child process: this test's settings as JETLEDGER_* variables."""
    import dataclasses
    import os

    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        if field.name == "extra":
            continue
        env[f"JETLEDGER_{field.name.upper()}"] = str(getattr(settings, field.name))
    for key, value in overrides.items():
        env[f"JETLEDGER_{key.upper()}"] = str(value)
    return env


_PREPARED: set[tuple[str, ...]] = set()


def prepare_for(module: str, env: dict[str, str]) -> None:
    """Run what the Kubernetes Jobs run before ``module`` may start: ``jetledger provision``
    (every service needs the streams) and, for the projectors, ``jetledger migrate``; once per
    system (NATS, streams, database)."""
    import sys

    steps = [["provision"]]
    if module == "services.ledger.main":
        steps.append(["migrate", "--only", "ledger"])
    if module == "services.notification.main":
        steps.append(["migrate", "--only", "notifications"])
    for step in steps:
        where = (env.get(f"JETLEDGER_{k}", "") for k in ("NATS_URL", "STREAM", "DATABASE_URL"))
        key = (*step, *where)
        if key in _PREPARED:
            continue
        done = subprocess.run(
            [str(Path(sys.executable).parent / "jetledger"), *step],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"jetledger {' '.join(step)} failed: {done.stderr.strip()}")
        _PREPARED.add(key)


def spawn_service(
    module: str, env: dict[str, str], log_path: Path, *, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m <module>`` as a child process (after ``prepare_for``), logging to
    ``log_path``; with ``profile``, under cProfile, its stats written there when it stops."""
    import sys

    prepare_for(module, env)
    profiled = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *profiled, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_serving(port: int, within: float = 60.0) -> None:
    """Wait until the gRPC server on ``port`` reports SERVING (a child process on a loaded
    machine can take tens of seconds to import and start)."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + within
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"service on port {port} never became SERVING")
            await asyncio.sleep(0.1)


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) of ``pid`` and every process under it, the ended ones its
    parents waited for included (``/proc``; 0.0 when unknown). On a shared machine a phase's CPU
    per event is a steadier figure than its wall time."""
    import os

    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0)
        todo += [child for child, up in parent.items() if up == current]
    return total / tick
