"""The checked-in protobuf stubs and event schema match their sources (`make proto`, `make schema`)."""

from __future__ import annotations

from pathlib import Path

from contracts import codegen, events_schema


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    fresh, checked_in = _tree(tmp_path), _tree(codegen.GEN_ROOT)
    assert sorted(fresh) == sorted(checked_in), "run `make proto`"
    drifted = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not drifted, f"generated code drifted from contracts/proto (run `make proto`): {drifted}"


def test_event_schema_is_current() -> None:
    path = Path(events_schema.__file__).resolve().parent.parent / events_schema.SCHEMA_PATH
    assert path.read_text() == events_schema.render(), "run `make schema`"


def test_vendored_protos_are_the_packages_own() -> None:
    """google/rpc/status.proto is imported by our protos and copied only so that protoc and buf
    resolve it offline; its Python code comes from googleapis-common-protos, so the copy must be
    exactly the package's."""
    from google.rpc import status_pb2

    package_root = Path(status_pb2.__file__).resolve().parents[2]
    vendored = sorted(codegen.VENDORED.rglob("*.proto"))
    assert [p.relative_to(codegen.PROTO_ROOT).as_posix() for p in vendored] == [
        "google/rpc/status.proto"
    ]
    for path in vendored:
        original = package_root / path.relative_to(codegen.PROTO_ROOT)
        assert path.read_bytes() == original.read_bytes(), f"{path} differs from {original}"
    assert all(not p.is_relative_to(codegen.VENDORED) for p in codegen.proto_files())
