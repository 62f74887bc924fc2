"""Change data capture: stream a PostgreSQL table's changes into an unbroken sink.

| module        | what it holds                                                              |
|---------------|----------------------------------------------------------------------------|
| `pipeline.py` | `Pipeline`, `run_pipeline`: the stream inside a task, on `run_chunks`      |
| `stream.py`   | the pages run_chunks reads: validation, slot transactions, backfill, heartbeats |
| `source.py`   | the connection to the source: slot, publication, messages, backfill SELECTs |
| `changes.py`  | `Change`, what a write function gets                                       |
| `mirror.py`   | `mirror`: apply changes to sink tables shaped like the source's            |
| `pgoutput.py` | the pgoutput decoder (pure, no I/O)                                        |

docs/cdc.md describes the guarantees and the operations (slots, WAL, dead letters).
"""

from unbroken.cdc.changes import UNCHANGED, Change
from unbroken.cdc.mirror import mirror
from unbroken.cdc.pipeline import Pipeline, run_pipeline
from unbroken.cdc.source import drop_slot

__all__ = ["UNCHANGED", "Change", "Pipeline", "drop_slot", "mirror", "run_pipeline"]
