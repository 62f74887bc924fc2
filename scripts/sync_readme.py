"""Rewrite the README's settings table from the code (tests/unit/test_readme.py checks it)."""

from __future__ import annotations

from pathlib import Path

from unbroken.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"

text = README.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
README.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}")
