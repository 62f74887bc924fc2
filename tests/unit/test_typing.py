"""A type checker catches a wrong task argument at the enqueue call (ParamSpec), and a
chunk runner of the wrong form (sync/async) for its write function."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "typing").glob("*.py"))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_mypy_flags_exactly_the_wrong_calls(sample: Path) -> None:
    stdout, _, _ = api.run(["--strict", "--no-incremental", "--hide-error-context", str(sample)])
    flagged = {int(line.split(":")[1]) for line in stdout.splitlines() if ": error:" in line}
    expected = {
        n
        for n, line in enumerate(sample.read_text().splitlines(), start=1)
        if line.rstrip().endswith("# error")
    }
    assert flagged == expected, stdout
