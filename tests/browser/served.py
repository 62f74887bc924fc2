"""What the `served` fixture hands a browser test."""

from __future__ import annotations

from dataclasses import dataclass

from ops_seed import Seeded


@dataclass
class Served:
    base: str  # the dashboard's URL
    url: str  # the database
    seeded: Seeded
