"""The README's promises that code can check."""

from __future__ import annotations

from pathlib import Path

from unbroken.settings import settings_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_first_screen_shows_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "make demo" in first_screen
    assert "make test" in first_screen


def test_configuration_table_matches_the_settings() -> None:
    start = README.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = README.index("<!-- settings-table:end -->")
    assert README[start:end].strip() == settings_table().strip(), (
        "README settings table is stale: paste `unbroken config --markdown`"
    )
