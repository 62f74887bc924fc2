"""A type checker catches a wrong task argument at the enqueue call (ParamSpec)."""

from __future__ import annotations

from pathlib import Path

from mypy import api

SAMPLE = Path(__file__).resolve().parents[1] / "typing" / "wrong_arguments.py"


def test_mypy_flags_exactly_the_wrong_calls() -> None:
    stdout, _, _ = api.run(["--strict", "--no-incremental", "--hide-error-context", str(SAMPLE)])
    flagged = {int(line.split(":")[1]) for line in stdout.splitlines() if ": error:" in line}
    expected = {
        n
        for n, line in enumerate(SAMPLE.read_text().splitlines(), start=1)
        if line.rstrip().endswith("# error")
    }
    assert flagged == expected, stdout
