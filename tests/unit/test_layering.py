"""The layering, read from the import graph (``ast``) of every module in the repository.

- NATS is the event store's business: ``nats`` is imported only in ``eventstore/`` and the
  composition roots (each service's ``main.py``, the adapters they share in ``services/wiring.py``,
  ``jetledger dev``, which starts the servers, and the CLI's entry point, which explains a NATS
  failure in one line).
- A service never imports another service's internals (card, transaction, ledger, notification).
- The write side (``commands/``, ``services/intake``, ``services/card``, ``services/transaction``)
  never imports the read models (``projections/``): decisions never rest on a projection.
- The pure core (``commands/``, ``contracts/``) imports only the standard library and msgspec.
- Benchmarks never import the tests (what they share lives in ``bench/``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "commands", "eventstore", "projections", "services", "bench", "tests")
SERVICES = ("card", "transaction", "ledger", "notification")
# the CLI's entry point explains a NATS failure in one line (``services/cli/failures.py``); the
# gRPC status boundary answers a NATS outage with UNAVAILABLE (``services/grpc_errors.py``)
NATS_ROOTS = (
    "services/wiring.py",
    "services/dev/",
    "services/cli/failures.py",
    "services/grpc_errors.py",
)
WRITE_SIDE = ("commands/", "services/intake/", "services/card/", "services/transaction/")
PURE_CORE = ("commands/", "contracts/")
PURE_ALLOWED = {"msgspec", "contracts", "commands"}


def modules() -> Iterator[tuple[str, set[str]]]:
    """Every module's path (relative, POSIX) and the absolute module names it imports."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("contracts/gen/"):
                continue  # generated stubs
            tree = ast.parse(path.read_text(), relative)
            found: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
            yield relative, found


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _is_root(path: str) -> bool:
    return path.endswith("/main.py") or path.startswith(NATS_ROOTS)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return dict(modules())


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # the checks below mean nothing if the walk found nothing
    assert "eventstore/reader.py" in graph and "nats.nuid" in graph["eventstore/wire.py"]
    assert any(path.startswith("projections/") for path in graph)


def test_nats_only_in_the_event_store_and_composition_roots(graph: dict[str, set[str]]) -> None:
    offenders = sorted(
        path
        for path, imported in graph.items()
        if any(_top(name) == "nats" for name in imported)
        and path.startswith(("contracts/", "commands/", "projections/", "services/"))
        and not _is_root(path)
    )
    assert offenders == []


def test_no_service_imports_another_services_internals(graph: dict[str, set[str]]) -> None:
    offenders = []
    for path, imported in graph.items():
        parts = path.split("/")
        if parts[0] != "services" or len(parts) < 3 or parts[1] not in SERVICES:
            continue
        for name in imported:
            tokens = name.split(".")
            other = tokens[1] if tokens[0] == "services" and len(tokens) > 1 else ""
            if other in SERVICES and other != parts[1]:
                offenders.append(f"{path} imports {name}")
    assert offenders == []


def test_the_write_side_never_imports_read_models(graph: dict[str, set[str]]) -> None:
    offenders = [
        f"{path} imports {name}"
        for path, imported in graph.items()
        if path.startswith(WRITE_SIDE)
        for name in imported
        if _top(name) == "projections"
    ]
    assert offenders == []


def test_the_pure_core_imports_only_the_standard_library_and_msgspec(
    graph: dict[str, set[str]],
) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = [
        f"{path} imports {name}"
        for path, imported in graph.items()
        if path.startswith(PURE_CORE) and not path.endswith("codegen.py")
        for name in imported
        if _top(name) not in stdlib | PURE_ALLOWED
    ]
    assert offenders == []


def test_benchmarks_never_import_the_tests(graph: dict[str, set[str]]) -> None:
    offenders = [
        f"{path} imports {name}"
        for path, imported in graph.items()
        if path.startswith("bench/")
        for name in imported
        if _top(name) == "tests"
    ]
    assert offenders == []
