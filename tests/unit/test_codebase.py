"""Checks on the code base itself: generated code (db/_sync, chunks/_sync) is current, SQL is
well-formed (the public surface: test_public_api.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from unbroken.migrations import available, render
from unbroken.sql import Queries

ROOT = Path(__file__).resolve().parents[2]


def test_generated_sync_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_sync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_has_a_purpose_and_uses_the_schema() -> None:
    q = Queries("unbroken")
    assert len(q.names()) >= 15
    for name in q.names():
        query = q.get(name)
        assert query.purpose, name
        # Our tables are always schema-qualified; only catalog queries (pg_*) may skip it. A
        # condition fragment names no table; the fragments it composes must exist.
        parts = {p.decode() for p in re.findall(rb"\{(\w+)\}", query.text)}
        assert parts <= set(q.names()), name
        if not re.search(rb"\b(FROM|INTO|UPDATE|JOIN|TABLE)\b", query.text, re.IGNORECASE):
            continue
        assert b"unbroken." in query.text or b"pg_" in query.text, name


def test_schema_is_substituted_everywhere() -> None:
    q = Queries("tenant_a")
    for name in q.names():
        assert b"unbroken." not in q[name], name
    assert b"pg_notify('tenant_a.jobs'" in q["job_promote_due"]


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))


def test_render_refuses_an_unsafe_schema_name() -> None:
    import pytest

    from unbroken.errors import MigrationError

    with pytest.raises(MigrationError):
        render("SELECT 1", 'x"; DROP TABLE jobs; --')


def test_user_facing_text_has_no_internal_references() -> None:
    """The README, docs, CHANGELOG, examples and the package's comments say what happened
    ("a Jira sync that ran 30,000 records in one transaction"), never which internal case
    or ticket it came from ("seed 000", "issue 11")."""
    import re

    jargon = re.compile(r"\bseeds? \d{3}\b|\bissues? #?\d+\b|\(#\d+\)", re.IGNORECASE)
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")]
    files += [*(ROOT / "examples").rglob("*.py"), *(ROOT / "src/unbroken").rglob("*.py")]
    files += [*(ROOT / "src/unbroken").rglob("*.sql")]
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if jargon.search(line)
    ]
    assert not found, "\n".join(found)
