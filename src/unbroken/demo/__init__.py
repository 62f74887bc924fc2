"""The `make demo` workload: seed 000's Jira sync, done so that it cannot lose work."""
