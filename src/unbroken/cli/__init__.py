"""The `unbroken` command line. Each command group lives in its own module."""

from unbroken.cli.main import main

__all__ = ["main"]
