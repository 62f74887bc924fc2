"""A workflow's steps laid out for its page: by level, a step one level below the deepest
of the steps it waits for, so the page draws the graph top-down with no script."""

from __future__ import annotations

from unbroken.ops.rows import WorkflowStep


def levels(steps: list[WorkflowStep]) -> list[list[WorkflowStep]]:
    """Steps grouped by depth (a step without upstream steps is at depth 0), in id order."""
    depth: dict[int, int] = {}
    rows: list[list[WorkflowStep]] = []
    for step in sorted(steps, key=lambda s: s.id):  # upstream ids are below their dependents'
        level = 1 + max((depth.get(i, -1) for i in step.after), default=-1)
        depth[step.id] = level
        while len(rows) <= level:
            rows.append([])
        rows[level].append(step)
    return rows
