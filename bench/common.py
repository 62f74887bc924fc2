"""Shared pieces of the benchmarks: repeated measurements, tables, the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


@dataclass
class Repeated:
    """One figure measured several times: we report the best and the median."""

    values: list[float] = field(default_factory=list)
    higher_is_better: bool = True

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def best(self) -> float:
        if not self.values:
            return float("nan")
        return max(self.values) if self.higher_is_better else min(self.values)

    @property
    def median(self) -> float:
        return median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {"best": self.best, "median": self.median, "runs": self.values}


def fmt(value: float | int | str | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    if isinstance(value, int) or digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = []
        for i, cell in enumerate(row):
            numeric = cell[:1].isdigit() or (cell[:1] in "-+." and cell[1:2].isdigit())
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [f"\n== {title} ==", line(cells[0]), rule]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("MET" if ok else "MISSED")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 1024 / 1024, 1)
        info["load_at_start"] = os.getloadavg()
    except (OSError, ValueError, IndexError):
        pass
    return info


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip() or None
    if rev and dirty.stdout.strip():
        rev += "+dirty"
    return rev


class Results:
    """Every section's figures; written as one JSON file in bench/results/."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.started = datetime.now(UTC)
        self.data: dict[str, Any] = {
            "started_at": self.started.isoformat(timespec="seconds"),
            "argv": list(argv),
            "machine": machine(),
            "git": git_revision(),
            "sections": {},
        }

    def section(self, name: str, payload: dict[str, Any]) -> None:
        self.data["sections"][name] = payload

    def path(self) -> Path:
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        return RESULTS_DIR / f"bench-{stamp}.json"

    def write(self, path: Path | None = None) -> Path:
        target = path or self.path()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(target)
        return target


def say(text: str) -> None:
    print(text, flush=True)


def progress(text: str) -> None:
    """A progress line on stderr, so stdout stays the tables."""
    print(f"  .. {text}", file=sys.stderr, flush=True)
