"""Change data capture: stream a PostgreSQL table's changes into an unbroken sink."""
