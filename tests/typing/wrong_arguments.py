# Checked by tests/unit/test_typing.py: mypy must flag exactly the lines marked "error".
from __future__ import annotations

import unbroken

app = unbroken.App(database_url="postgresql://localhost/typing")


@app.task(queue="mail")
async def send(user_id: int, template: str = "welcome") -> None: ...


@app.task
def plain(n: int) -> int:
    return n


def calls() -> None:
    send.enqueue(1)
    send.enqueue(1, template="bye")
    send.enqueue("1")  # error
    send.enqueue(1, tpl="x")  # error
    send.using(priority=5).enqueue()  # error
    plain.job(2)
    plain.job(2, 3)  # error
    app.enqueue_many([plain.job(1), send.job(2)])
