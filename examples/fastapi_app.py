# examples/fastapi_app.py
"""FastAPI: the lifespan opens unbroken's async pools, an endpoint awaits the enqueue.

uvicorn fastapi_app:api                          # serve (from this directory)
unbroken worker --app fastapi_app:jobs -q mail   # run the jobs
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

import unbroken

jobs = unbroken.App()  # UNBROKEN_DATABASE_URL / DATABASE_URL / PG*, else embedded


@jobs.task(queue="mail", max_attempts=5)
async def send_welcome(email: str) -> None:
    print(f"welcome, {email}")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await jobs.adatabase()  # open the pools (and migrate) before the first request
    yield
    await jobs.aclose()


api = FastAPI(lifespan=lifespan)


class Signup(BaseModel):
    email: str


@api.post("/signups", status_code=201)
async def signup(body: Signup) -> dict[str, int]:
    return {"job": await send_welcome.aenqueue(body.email)}
