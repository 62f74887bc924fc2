"""Operating unbroken: what the CLI's operator commands, the dashboard and the metrics read.

- `store`: `OperatorStore`, the operator's queries and guarded bulk actions (sql/admin.sql).
- `rows`: the typed rows those queries return.
- `filters`: `JobFilter` (what an operator narrows jobs by) and `parse_duration`.
- `format`: how values are shown to people (ages, durations, JSON, `Undecodable`), shared
  by the CLI and the dashboard so they cannot drift apart.
- `health`: the health score and its reasons.

Internal: nothing here is in `unbroken.__all__`.
"""
