"""Chunked runs: a large source processed in chunks, each committed with the job's checkpoint.

Inside a task:

    async def write(chunk: AsyncChunk[Issue]) -> None:
        await chunk.upsert("issues", ["id", "title"], [(i.id, i.title) for i in chunk.items],
                           key=["id"])

    await arun_chunks(lambda cursor: jira.issues(start_at=cursor or 0), write, chunk_size=500)

(`run_chunks(source, write)` in a sync task, with `write(chunk: Chunk[Issue])`.)

What the runtime guarantees, chunk by chunk:
- the chunk's writes, the checkpoint and the progress counters commit in ONE transaction on a
  connection from the worker's "chunks" pool; nothing spans two chunks;
- the source is read with no connection held and no transaction open (it may be a slow API);
- the commit is fenced: it happens only while this worker holds the job's lease for this
  attempt, else it rolls back and `LeaseLost` is raised (a rescued job's old worker can
  never commit a chunk);
- a lost connection (restart, terminated backend, half-open network) retries the same chunk
  on a fresh connection with backoff, without failing the job; a commit whose answer was
  lost is looked up, never written twice; only `retries` failures in a row fail the attempt;
- a retried or rescued job resumes after its last committed chunk: a source given as a
  function receives the checkpoint and seeks, any other source has its done items skipped;
  a checkpoint of None means the source's start (a last page may have no next cursor: a
  chunk ending with it reads on to the end first and commits `done`, and a run resumed at
  None skips everything done), so nothing is written twice and a finished run reads nothing;
- the chunk size is read between chunks: the job's own `chunk_size`, else the task's
  run-time setting (`task_settings`), else `chunk_size=` here, else `@app.task(chunk_size=)`;
- chunk commits do not wait for their WAL flush (the run's last one does, and flushes all
  before it): a database crash can undo the latest chunks only together with their
  checkpoints, and the run then reads the source again from the checkpoint that survived.
  `flush_each_chunk=True` makes every commit wait instead.

The package:

| module              | what it holds                                                        |
|---------------------|----------------------------------------------------------------------|
| `state.py`          | the algorithm, once, with no I/O: a generator of effects (sans-IO)   |
| `_async/runner.py`  | `arun_chunks` and `AsyncChunk`, performing those effects with await  |
| `_async/sinks.py`   | `acopy_rows`, `aupsert_rows`, `aorm_session` on a chunk's connection |
| `_async/progress.py`| `aread_progress`                                                     |
| `_sync/*`           | GENERATED from `_async/` by scripts/gen_sync.py: `run_chunks`, `Chunk`, |
|                     | `copy_rows`, `upsert_rows`, `orm_session`, `read_progress`           |
| `compat.py`         | by hand, what differs by more than `await`: reading the source, ...  |
| `sinks.py`          | the statements (COPY, upsert) and the connection lent to SQLAlchemy  |
| `progress.py`       | `Progress`, and the keys of `jobs.progress`                          |

Naming: the sync form has the plain name, the async one `a` + name; async-only classes
`Async` + name. All of this is internal; the public names are those in `unbroken.__all__`.
"""

from unbroken.chunks._async.progress import aread_progress
from unbroken.chunks._async.runner import AsyncChunk, arun_chunks
from unbroken.chunks._sync.progress import read_progress
from unbroken.chunks._sync.runner import Chunk, run_chunks
from unbroken.chunks.compat import CHUNKS_POOL
from unbroken.chunks.progress import Progress
from unbroken.chunks.state import BadRecords, Page

__all__ = [
    "CHUNKS_POOL",
    "AsyncChunk",
    "BadRecords",
    "Chunk",
    "Page",
    "Progress",
    "aread_progress",
    "arun_chunks",
    "read_progress",
    "run_chunks",
]
