"""Generate the protobuf/gRPC Python stubs (and their type stubs) from ``contracts/proto``.

Run ``make proto`` (``python -m contracts.codegen``). The output under ``contracts/gen`` is
checked in, never edited by hand, excluded from lint, and ``tests/unit/test_generated_code.py``
fails when it drifts from the protos. grpcio-tools bundles protoc, so no network is needed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
GEN_ROOT = ROOT / "gen"


# Imported protos copied from their packages (google.rpc.Status from googleapis-common-protos):
# resolvable offline by protoc and buf, never generated here: the package brings their Python code.
VENDORED = PROTO_ROOT / "google"


def proto_files() -> list[Path]:
    """Every ``.proto`` file of jetledger's own contracts, sorted (the vendored ones excluded)."""
    return sorted(p for p in PROTO_ROOT.rglob("*.proto") if not p.is_relative_to(VENDORED))


def generate(out_dir: Path) -> None:
    """Generate Python, gRPC and mypy stubs for every proto file into ``out_dir``."""
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    includes = Path(protoc.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent  # the mypy-protobuf plugins live beside python
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{includes}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in [out_dir / "jetledger", *(out_dir / "jetledger").rglob("*")]:
        if directory.is_dir() and directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    (out_dir / "jetledger" / "py.typed").touch()  # the .pyi stubs are the package's types


def main() -> None:
    """Regenerate ``contracts/gen`` in place."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        shutil.rmtree(GEN_ROOT, ignore_errors=True)
        shutil.copytree(tmp, GEN_ROOT, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"generated {len(proto_files())} proto files into {GEN_ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
