"""Settings: defaults validate, bad input is one line naming the setting."""

from __future__ import annotations

import pytest

from unbroken.cli.main import main
from unbroken.errors import ConfigError
from unbroken.settings import Settings, load_settings


def test_defaults_are_valid_and_documented() -> None:
    settings = load_settings()
    assert settings.pool_max_size >= settings.pool_min_size
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} needs a one-line reason"


def test_out_of_range_env_var_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_POOL_MAX_SIZE", "0")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith("UNBROKEN_POOL_MAX_SIZE:")
    assert "\n" not in message


def test_override_keyword_is_named_as_written() -> None:
    with pytest.raises(ConfigError, match=r"^concurrency: .*greater than or equal to 1"):
        load_settings(concurrency=0)


def test_unknown_env_var_suggests_the_close_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_POOL_MAXSIZE", "3")
    with pytest.raises(
        ConfigError,
        match=r"UNBROKEN_POOL_MAXSIZE: unknown setting \(did you mean pool_max_size\?\)",
    ):
        load_settings()


def test_malformed_url_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNBROKEN_DATABASE_URL", "postgresql://u:sekrit@host:notaport/db")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("UNBROKEN_DATABASE_URL: not a valid PostgreSQL URL")
    assert "sekrit" not in str(err.value)


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pool_min_size .* larger than pool_max_size"):
        load_settings(pool_min_size=5, pool_max_size=2)


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGPORT", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().configured_url() is None  # embedded
    monkeypatch.setenv("PGHOST", "db.internal")
    assert load_settings().configured_url() == ""  # libpq reads PG*
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    assert load_settings().configured_url() == "postgresql://app@db/app"
    assert load_settings(database_url="postgresql://x@y/z").configured_url() == (
        "postgresql://x@y/z"
    )


def test_bad_database_url_env_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://h:port/db")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: not a valid"):
        load_settings().configured_url()


def test_deadline_derives_from_statement_timeout() -> None:
    assert load_settings(statement_timeout=5).deadline() == 15
    assert load_settings(statement_deadline=2).deadline() == 2


# --- issue 12: numbers the runtime or PostgreSQL cannot use, and the password -----------------
@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("UNBROKEN_STATEMENT_TIMEOUT", "1e309", "finite number"),  # parses as inf
        ("UNBROKEN_LEASE_SECONDS", "inf", "finite number"),
        ("UNBROKEN_POLL_INTERVAL", "nan", "finite number"),
        ("UNBROKEN_RETENTION_SECONDS", "-inf", "finite number"),
        # PostgreSQL holds statement_timeout in integer milliseconds (at most 2^31 - 1)
        ("UNBROKEN_STATEMENT_TIMEOUT", "3000000", "less than or equal to 2147483.647"),
        ("UNBROKEN_IDLE_IN_TRANSACTION_TIMEOUT", "1e9", "less than or equal to 2147483.647"),
        # make_interval(secs => ...) and the clocks' arithmetic: a finite but absurd duration
        ("UNBROKEN_LEASE_SECONDS", "1e300", "less than or equal to"),
        ("UNBROKEN_SHUTDOWN_TIMEOUT", "1e20", "less than or equal to"),
        ("UNBROKEN_KEEPALIVES_IDLE", "99999999999", "less than or equal to"),
        ("UNBROKEN_TCP_USER_TIMEOUT", "2147483648", "less than or equal to"),
        ("UNBROKEN_MAX_PAYLOAD_BYTES", "1099511627776", "less than or equal to"),
    ],
)
def test_numbers_nothing_downstream_can_hold_are_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(f"{variable}: ")
    assert reason in message
    assert "\n" not in message


def test_every_duration_has_an_upper_bound() -> None:
    for name, field in Settings.model_fields.items():
        if field.annotation in (int, float) and name != "embedded_port":
            bounded = any(getattr(m, "le", None) is not None for m in field.metadata)
            assert bounded, f"{name} needs an upper bound (le=...)"


URL = "postgresql://app:hunter2@db.internal:5432/orders"


def test_repr_and_every_dump_hide_the_password() -> None:
    settings = load_settings(database_url=URL, listen_url=URL)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert "hunter2" not in settings.model_dump_json()
    assert "hunter2" not in str(settings.model_dump())
    for url in (settings.database_url, settings.listen_url):
        assert "hunter2" not in str(url)
        assert "db.internal" in str(url)  # the rest is still shown
    assert settings.configured_url() == URL  # what connects has it
    assert settings.listen_url is not None
    assert settings.listen_url.get_secret_value() == URL


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("UNBROKEN_DATABASE_URL", "postgresql://app:hunt%er2@db/orders"),
        ("UNBROKEN_DATABASE_URL", "postgresql://app:hunter2%@db/orders"),
        ("UNBROKEN_DATABASE_URL", "host=db password=hunter2 extra"),
        ("DATABASE_URL", "postgresql://app:hunt%er2@db/orders"),
        ("UNBROKEN_LISTEN_URL", "postgresql://app:hunt%er2@db/orders"),
        ("UNBROKEN_LISTEN_URL", "host=db password=hunter2 extra"),
    ],
)
def test_a_url_that_does_not_parse_never_shows_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings().configured_url()
    message = str(err.value)
    assert message.startswith(f"{variable}: not a valid PostgreSQL URL")
    for piece in ("hunter2", "hunt", "er2"):
        assert piece not in message


def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> tuple[int, str, str]:
    """`unbroken ARGS` in this process: (exit code, stdout, stderr)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code: int | str | None = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err


def test_cli_config_json_and_text_never_show_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for args in (("config", "--json"), ("config",)):
        code, out, err = run_cli(
            capsys, monkeypatch, *args, UNBROKEN_DATABASE_URL=URL, UNBROKEN_LISTEN_URL=URL
        )
        assert code == 0, err
        assert "hunter2" not in out + err
        assert "db.internal" in out


@pytest.mark.parametrize(
    "env",
    [
        {"UNBROKEN_STATEMENT_TIMEOUT": "1e309"},
        {"UNBROKEN_LEASE_SECONDS": "inf"},
        {"UNBROKEN_DATABASE_URL": "postgresql://app:hunt%er2@db/orders"},
        {"UNBROKEN_LISTEN_URL": "postgresql://app:hunt%er2@db/orders"},
    ],
)
def test_cli_refuses_them_in_one_line_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    code, out, err = run_cli(capsys, monkeypatch, "config", **env)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "hunt" not in out + err
