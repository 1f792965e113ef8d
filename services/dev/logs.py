"""The services log JSON lines to files; ``jetledger dev`` shows them as readable terminal lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.text import Text

LEVEL_STYLES: Final = {
    "debug": "dim",
    "info": "",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold red",
}
LEVEL_ORDER: Final = ("debug", "info", "warning", "error", "critical")
# Fields every line has, shown in their own columns rather than as key=value.
_FIXED: Final = frozenset({"ts", "level", "logger", "msg", "taskName"})


def level_at_least(level: str, minimum: str) -> bool:
    """Tell whether ``level`` is as severe as ``minimum`` (unknown levels always pass)."""
    if level not in LEVEL_ORDER or minimum not in LEVEL_ORDER:
        return True
    return LEVEL_ORDER.index(level) >= LEVEL_ORDER.index(minimum)


def readable(service: str, line: str) -> tuple[str, Text]:
    """Turn one JSON log line into ``(level, text)``; a non-JSON line passes through as-is."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return "info", Text.assemble((f"{service:<12} ", "cyan"), line.rstrip())
    level = str(record.get("level", "info"))
    clock = str(record.get("ts", ""))[11:19]
    extras = " ".join(f"{k}={v}" for k, v in record.items() if k not in _FIXED and k != "exc")
    text = Text.assemble(
        (f"{clock} ", "dim"),
        (f"{service:<12} ", "cyan"),
        (f"{level.upper():<7} ", LEVEL_STYLES.get(level, "")),
        str(record.get("msg", "")),
        (f"  {extras}" if extras else "", "dim"),
    )
    if "exc" in record:
        text.append("\n" + str(record["exc"]), style="red")
    return level, text


@dataclass
class LogFollower:
    """Reads the lines appended to a set of log files since it started following them."""

    offsets: dict[str, tuple[Path, int]] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)

    def follow(self, name: str, path: Path) -> None:
        """Start reading ``path`` from its current end."""
        size = path.stat().st_size if path.exists() else 0
        self.offsets[name] = (path, size)

    def read(self) -> list[tuple[str, str]]:
        """Return ``(name, line)`` for every complete line written since the last call."""
        found: list[tuple[str, str]] = []
        for name, (path, offset) in self.offsets.items():
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            self.offsets[name] = (path, offset + len(chunk))
            text = self.partial.pop(name, "") + chunk.decode(errors="replace")
            *lines, rest = text.split("\n")
            if rest:
                self.partial[name] = rest  # a line still being written: finish it next time
            found.extend((name, line) for line in lines if line.strip())
        return found


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last lines of a log file (for a crash report)."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
