"""The few names that differ between the async source and the generated sync code."""

from __future__ import annotations

from asyncio import sleep as asleep
from collections.abc import Awaitable, Callable
from time import sleep
from typing import Any, TypeAlias, TypeVar

from psycopg import AsyncConnection, Connection

T = TypeVar("T")

AsyncWork: TypeAlias = Callable[[AsyncConnection[Any]], Awaitable[T]]
Work: TypeAlias = Callable[[Connection[Any]], T]

__all__ = ["AsyncWork", "Work", "asleep", "sleep"]
