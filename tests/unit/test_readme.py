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


def _commands() -> dict[str, bool]:
    """Every `unbroken` command (and group that runs on its own) -> whether it has --json."""
    import click
    import typer

    from unbroken.cli.main import _register, app

    _register()
    found: dict[str, bool] = {}

    def walk(cmd: click.Command, path: str) -> None:
        has_json = any(isinstance(p, click.Option) and "--json" in p.opts for p in cmd.params)
        if isinstance(cmd, click.Group):
            if path and cmd.invoke_without_command:
                found[path] = has_json
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = has_json

    walk(typer.main.get_command(app), "")
    return found


def test_the_commands_said_to_have_json_have_it() -> None:
    start = README.index("These also have `--json`")
    said = README[start : README.index("The others", start)].split(":", 1)[1]
    listed = said.split("`")[1::2]  # the backticked command names
    assert listed
    commands = _commands()
    for command, has_json in commands.items():
        named = any(command == n or command.startswith(f"{n} ") for n in listed)
        assert has_json == named, f"`unbroken {command}`: --json {has_json}, README {named}"
