"""The worker's moving parts, each one small module with one job (unbroken.Worker composes them).

- `worker`: the Worker: builds the parts below on one small pool, runs them, handles signals
  and the shutdown sequence.
- `producer`: claims jobs into the executor's free slots (job_get_available), never more.
- `executor`: runs attempts in bounded slots (async on the loop, sync in daemon threads),
  timeouts, and turns each attempt into an Outcome.
- `completer`: buffers outcomes and writes each batch as one job_finish_many statement.
- `leases`: the lease keeper: renews every held lease and the heartbeat in one statement,
  and picks up cancel requests.
- `notifier`: the LISTEN connection that wakes the producer, with liveness checks.
- `elector`: leader election through the database (a term row and the listener's session).
- `maintenance`: what the leader runs: rescue expired leases, promote due jobs, forget dead
  workers, prune (`pruner`: batches until caught up).
- `rows`: the typed rows these modules fetch.

Everything here is internal; the public name is `unbroken.Worker`.
"""
