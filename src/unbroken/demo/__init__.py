"""The `make demo` workload: a 30-minute Jira sync, done so that it cannot lose work."""
