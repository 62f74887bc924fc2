"""How operator values are shown to people, shared by the CLI and the dashboard.

Ages, durations, rates, cut-short text, JSON for a person to read and JSON for scripts
(`--json`, the dashboard's API). The two views differ only in presentation (the CLI marks
a missing value "-", the dashboard "–" and puts a space before a unit), passed as
arguments, so the rules themselves live here once.

A json/jsonb value the store reads is decoded by `lenient_loads`, which never raises: a
value nested deeper than a payload may be (another client's SQL wrote it) or not JSON at
all comes back as an `Undecodable` string with its text cut short, so no list, page or
`--json` output fails on one row, and nothing later recurses through it.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from unbroken.enqueue import MAX_PAYLOAD_DEPTH, nested_deeper_than


def format_age(seconds: float | None, missing: str = "-") -> str:
    """Compact human age: '45s', '3m12s', '2h05m', '3d04h'; `missing` when unknown."""
    if seconds is None or math.isnan(seconds):
        return missing
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_duration(seconds: float | None, missing: str = "-", unit_sep: str = "") -> str:
    """A run time: '120ms' below a second, else '1.25s' (`unit_sep` goes before the unit)."""
    if seconds is None:
        return missing
    if seconds < 1:
        return f"{seconds * 1000:.0f}{unit_sep}ms"
    return f"{seconds:.2f}{unit_sep}s"


def format_bytes(count: int | None, missing: str = "-") -> str:
    """A size in binary units: 512 -> '512 B', 1536 -> '1.5 KiB', 3 << 30 -> '3.0 GiB'."""
    if count is None:
        return missing
    if abs(count) < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if abs(size) < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def format_pct(fraction: float | None, missing: str = "-") -> str:
    """0.125 -> '12.5%'."""
    return missing if fraction is None else f"{fraction:.1%}"


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


class Undecodable(str):
    """A json/jsonb value the store would not decode: "<undecodable: why> its text…".

    A string, so every view (table, page, `--json`, the API) shows it without a special
    case; `reason` says why, `SHOWN` characters of the text are kept."""

    SHOWN = 200
    reason: str

    def __new__(cls, reason: str, text: str) -> Undecodable:
        cut = text if len(text) <= cls.SHOWN else text[: cls.SHOWN] + "…"
        value = super().__new__(cls, f"<undecodable: {reason}> {cut}")
        value.reason = reason
        return value


def lenient_loads(data: bytes | str) -> Any:
    """json.loads for the operator's reads, which never raises (see the module docstring)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if nested_deeper_than(text, MAX_PAYLOAD_DEPTH):
        return Undecodable("nested too deeply to show", text)
    try:
        return json.loads(text)
    except RecursionError:
        return Undecodable("nested too deeply to show", text)
    except ValueError as exc:
        return Undecodable(f"not JSON ({exc})", text)


def shown_json(value: Any, indent: int | None = None, *, compact: bool = False) -> str:
    """A value as JSON text for a person to read; an Undecodable as its own text.

    `compact` leaves out the spaces after separators (for a narrow table cell)."""
    if isinstance(value, Undecodable):
        return str(value)
    separators = (",", ":") if compact else None
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str, separators=separators)


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and decimals as plain JSON values (for `--json` and the API)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """A value as JSON for scripts (`--json`): dataclasses, datetimes and decimals included."""
    return json.dumps(jsonable(value), indent=indent, sort_keys=False)
