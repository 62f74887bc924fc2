"""A chunked job's progress: what the chunk runner commits, and how code reads it back.

The runner writes `jobs.progress` (JSON) in the same statement that saves the checkpoint, so
progress costs no write of its own and can never disagree with the data: it is exactly as
far as the last committed chunk. `read_progress(conn, job_id)` (`aread_progress` on an
async connection; `_async/progress.py`) turns it back into a `Progress`, with the
checkpoint's age measured by the database clock (the writer's and the reader's clocks may
differ).

Keys of `jobs.progress`:

| key          | meaning                                                                      |
|--------------|------------------------------------------------------------------------------|
| position     | items consumed from the source (written + failed); resumes and fences on it  |
| processed    | items handed to the chunk's writer and committed                             |
| failed       | items that failed validation and were skipped                                |
| total        | items in the source, when known (argument, `len(source)` or `Page.total`);   |
|              | never below position (a CHECK holds it), and exactly position once done     |
| chunks       | chunks committed                                                             |
| chunk_size   | the size the last chunk was read with                                        |
| rate         | items per second in the latest attempt (reading included)                    |
| eta_seconds  | (total - position) / rate, when both are known                               |
| page_skip    | items of the page at the checkpoint already consumed (paged sources)         |
| done         | the source was read to its end and everything committed                      |
| errors       | a sample of validation errors: [{"position": n, "error": "Type: message"}]   |
| attempt      | the attempt that committed last                                              |
| run          | the name of the chunked run these counters are about (`run_chunks(name=)`)   |
| seq          | chunks committed in this job over all its runs: the commit fence checks it   |
| finished     | the final counters of each finished run, by name                             |
| checkpoint_at| when the last chunk committed (set by the database)                          |

The counters at the top are the latest run's; a job that loads issues, then changelogs,
shows the changelogs while they load and keeps the issues' totals under `finished`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Progress:
    """How far a chunked job got, as of its last committed chunk."""

    job_id: int
    position: int = 0
    processed: int = 0
    failed: int = 0
    total: int | None = None
    chunks: int = 0
    chunk_size: int | None = None
    rate: float | None = None  # items per second, latest attempt
    eta_seconds: float | None = None
    done: bool = False
    checkpoint: Any = None
    checkpoint_at: datetime | None = None
    checkpoint_age: float | None = None  # seconds, by the database clock, when read back
    state: str | None = None  # the job's state, when read back
    errors: list[dict[str, Any]] = field(default_factory=list)  # sample of validation errors
    run: str | None = None  # which of the job's chunked runs these counters are about
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished runs, by name

    @property
    def fraction(self) -> float | None:
        """position / total in [0, 1], or None while the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.position / self.total)

    @classmethod
    def from_json(cls, job_id: int, progress: dict[str, Any] | None, **extra: Any) -> Progress:
        """Build from a `jobs.progress` value (None before the first chunk committed)."""
        p = progress or {}
        at = p.get("checkpoint_at")
        return cls(
            job_id=job_id,
            position=int(p.get("position", 0)),
            processed=int(p.get("processed", 0)),
            failed=int(p.get("failed", 0)),
            total=p.get("total"),
            chunks=int(p.get("chunks", 0)),
            chunk_size=p.get("chunk_size"),
            rate=p.get("rate"),
            eta_seconds=p.get("eta_seconds"),
            done=bool(p.get("done", False)),
            checkpoint_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
            errors=list(p.get("errors", [])),
            run=p.get("run"),
            finished=dict(p.get("finished", {})),
            **extra,
        )


def progress_from_row(row: tuple[Any, ...] | None) -> Progress | None:
    """A `Progress` from a `job_progress_get` row (None: there is no such job)."""
    if row is None:
        return None
    job_id, state, checkpoint, progress, age = row
    return Progress.from_json(
        job_id, progress, checkpoint=checkpoint, checkpoint_age=age, state=state
    )
