"""The lock files agree with pyproject.toml and with the installed environment.

``requirements/runtime.txt`` and ``requirements/dev.txt`` are what every install uses (``make``,
CI, the image), so they must not rot: a dependency added to or removed from ``pyproject.toml``
without ``make lock`` fails here, and so does a lock entry without hashes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
BUILD_IN = ROOT / "requirements" / "build.in"
PROJECT = "jetledger"

# uv writes a package's direct dependents as "# via jetledger (pyproject.toml)" and
# "# via -r requirements/build.in"; other packages name the locked package that needs them.
_ROOT_SOURCES = {f"{PROJECT} (pyproject.toml)": "pyproject", "-r requirements/build.in": "build"}


@dataclass
class Locked:
    version: str
    hashes: int = 0
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Locked]:
    """Return the packages of a ``uv pip compile --generate-hashes`` file by canonical name."""
    locked: dict[str, Locked] = {}
    current: Locked | None = None
    in_via = False
    for line in text.splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if pinned:
            current = locked[canonicalize_name(pinned[1])] = Locked(pinned[2])
            in_via = False
        elif current and line.strip().startswith("--hash=sha256:"):
            current.hashes += 1
        elif current and line.strip().startswith("# via"):
            rest = line.strip().removeprefix("# via").strip()
            in_via = True
            if rest:
                current.via.add(rest)
        elif current and in_via and line.strip().startswith("#"):
            current.via.add(line.strip().lstrip("#").strip())
        else:
            in_via = False
    return locked


def _direct(lock: dict[str, Locked], source: str) -> set[str]:
    return {
        name
        for name, entry in lock.items()
        if any(_ROOT_SOURCES.get(via) == source for via in entry.via)
    }


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(specs: list[str]) -> list[Requirement]:
    return [r for r in map(Requirement, specs) if canonicalize_name(r.name) != PROJECT]


def _declared(*, dev: bool) -> list[Requirement]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    specs = list(project["dependencies"])
    if dev:
        for extra in project["optional-dependencies"].values():
            specs += extra
    return _requirements(specs)


def _build_requires() -> tuple[list[Requirement], list[Requirement]]:
    build_in = [
        line for line in BUILD_IN.read_text().splitlines() if line and not line.startswith("#")
    ]
    system = _pyproject()["build-system"]
    assert isinstance(system, dict)
    return _requirements(build_in), _requirements(system["requires"])


@pytest.mark.parametrize(("lock_path", "dev"), [(RUNTIME_LOCK, False), (DEV_LOCK, True)])
def test_lock_matches_pyproject(lock_path: Path, dev: bool) -> None:
    lock = parse_lock(lock_path.read_text())
    declared = _declared(dev=dev)
    wanted = {canonicalize_name(r.name) for r in declared}
    direct = _direct(lock, "pyproject")
    assert direct == wanted, (
        f"{lock_path.name} is stale (run `make lock`): only in pyproject.toml "
        f"{sorted(wanted - direct)}, only in the lock {sorted(direct - wanted)}"
    )
    for requirement in declared:
        entry = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(entry.version, prereleases=True), (
            f"{lock_path.name} pins {requirement.name}=={entry.version}, "
            f"outside pyproject.toml's {requirement} (run `make lock`)"
        )
    build_in, build_system = _build_requires()
    assert {canonicalize_name(r.name) for r in build_in} == _direct(lock, "build")
    for requirement in build_system:
        entry = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(entry.version), (
            f"requirements/build.in and [build-system] disagree on {requirement.name}"
        )


@pytest.mark.parametrize("lock_path", [RUNTIME_LOCK, DEV_LOCK])
def test_every_locked_package_is_needed_and_hashed(lock_path: Path) -> None:
    lock = parse_lock(lock_path.read_text())
    for name, entry in lock.items():
        assert entry.hashes, f"{lock_path.name}: {name} has no hash (run `make lock`)"
        parents = {canonicalize_name(v.split()[0]) for v in entry.via if v not in _ROOT_SOURCES}
        assert entry.via & _ROOT_SOURCES.keys() or parents & lock.keys(), (
            f"{lock_path.name}: nothing needs {name} (run `make lock`)"
        )


def test_runtime_and_dev_locks_agree() -> None:
    runtime, dev = parse_lock(RUNTIME_LOCK.read_text()), parse_lock(DEV_LOCK.read_text())
    assert runtime.keys() <= dev.keys()
    moved = {
        n: (runtime[n].version, dev[n].version)
        for n in runtime
        if runtime[n].version != dev[n].version
    }
    assert not moved, f"the dev lock must extend the runtime lock (run `make lock`): {moved}"


def test_the_environment_has_the_locked_versions() -> None:
    """`make` installs the dev lock exactly; a hand-installed upgrade or downgrade shows here."""
    wrong = {}
    for name, entry in parse_lock(DEV_LOCK.read_text()).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is not None and installed != entry.version:
            wrong[name] = (entry.version, installed)
    assert not wrong, (
        f"installed versions differ from requirements/dev.txt (locked, installed): {wrong}"
    )


def test_parse_lock_reads_versions_hashes_and_parents() -> None:
    text = (
        "aiohttp==3.14.5 \\\n"
        "    --hash=sha256:aa \\\n"
        "    --hash=sha256:bb\n"
        "    # via jetledger (pyproject.toml)\n"
        "colorama==0.4.6 ; sys_platform == 'win32' \\\n"
        "    --hash=sha256:cc\n"
        "    # via\n"
        "    #   pytest\n"
        "    #   -r requirements/build.in\n"
    )
    lock = parse_lock(text)
    assert lock["aiohttp"] == Locked("3.14.5", 2, {"jetledger (pyproject.toml)"})
    assert lock["colorama"] == Locked("0.4.6", 1, {"pytest", "-r requirements/build.in"})
