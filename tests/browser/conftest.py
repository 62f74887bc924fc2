"""Headless Chromium (Debian's, installed on first use) and a live dashboard per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, sync_playwright
from served import Served

from live_server import serve
from ops_seed import seed
from unbroken.dashboard import create_app
from unbroken.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")  # closed before other tests: it holds an event loop
def browser() -> Iterator[Browser]:
    # Debian's chromium, not a Playwright download (which this network cannot reach).
    subprocess.run(["bash", str(ROOT / "scripts/ensure_chromium.sh")], check=True, timeout=900)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    """The seeded database behind a real uvicorn server on a free loopback port."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        seeded = seed(conn)
    app = create_app(load_settings(database_url=database_url), credentials=None, poll_interval=0.5)
    with serve(app) as base:
        yield Served(base, database_url, seeded)
