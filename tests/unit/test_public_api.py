"""The public surface, `unbroken.__all__`: sorted, importable, complete, and covering every
name the README's code uses (everything else in the package is internal)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import unbroken

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _isort_key(name: str) -> tuple[int, str]:
    """The order of ruff's RUF022: CONSTANTS, then Classes, then everything else."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def readme_names() -> set[str]:
    """Names of the package used by the README's Python code blocks: `from unbroken import
    X` and `unbroken.X` (a submodule, such as `unbroken.dashboard`, does not count)."""
    used: set[str] = set()
    for block in re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "unbroken":
                used.update(alias.name for alias in node.names)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "unbroken"
            ):
                used.add(node.attr)
    return {n for n in used if importlib.util.find_spec(f"unbroken.{n}") is None}


def test_all_is_sorted_without_duplicates() -> None:
    names = list(unbroken.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in unbroken.__all__ if not hasattr(unbroken, name)]
    assert not missing


def test_all_lists_every_public_name_the_package_defines() -> None:
    defined = {
        name
        for name, value in vars(unbroken).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert defined == set(unbroken.__all__) - {"__version__"}


def test_every_name_the_readme_code_uses_is_public() -> None:
    used = readme_names()
    assert {"App", "arun_chunks", "AsyncChunk"} <= used  # the blocks were read
    assert used - set(unbroken.__all__) == set()


def test_sync_and_async_twins_follow_one_naming_rule() -> None:
    """The sync form has the plain name, the async form `a` + name."""
    for sync in ("run_chunks", "read_progress"):
        assert sync in unbroken.__all__
        assert f"a{sync}" in unbroken.__all__
    assert "run_chunks_sync" not in unbroken.__all__
    assert not hasattr(unbroken, "run_chunks_sync")
