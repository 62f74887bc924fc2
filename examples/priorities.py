"""A priority rule as a function of the task's arguments.

Manual triggers first, then small repositories and recent ranges; larger runs first.
Run as a script (module `__main__`), so the task is named explicitly (README, "Task names").
"""

from __future__ import annotations

import unbroken

app = unbroken.App()
SIZE_BONUS = {"small": 30, "medium": 20}


def capture_priority(repo: str, size: str, days: int, manual: bool = False) -> int:
    priority = 40 if manual else 0
    priority += SIZE_BONUS.get(size, 0)
    priority += 20 if days <= 7 else 0
    return priority


@app.task(name="priorities.capture_pull_requests", priority=capture_priority)
def capture_pull_requests(repo: str, size: str, days: int, manual: bool = False) -> str:
    return f"captured {repo} ({size}, {days} d)"


def main() -> None:
    capture_pull_requests.enqueue("big/monorepo", "large", 90)  # priority 0
    capture_pull_requests.enqueue("acme/tool", "small", 3)  # 50
    capture_pull_requests.enqueue("acme/api", "medium", 30, manual=True)  # 60
    order: list[str] = []
    app.worker(burst=True, handle_signals=False, concurrency=1).run()
    with app.database().pool("api").connection() as conn:
        rows = conn.execute(
            "SELECT args->'args'->>0, priority FROM unbroken.jobs ORDER BY attempted_at"
        ).fetchall()
    for repo, priority in rows:
        order.append(repo)
        print(f"{priority:>3}  {repo}")
    assert order == ["acme/api", "acme/tool", "big/monorepo"], order
    app.close()


if __name__ == "__main__":
    main()
