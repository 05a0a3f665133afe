"""``pgjobs`` operator commands: status, dead letters, failed tasks, health, metrics, cleanup.

Each command prints one line and exits non-zero on bad input or an unreachable database;
``--json`` output is documented in the README ("Operating pgjobs") and kept stable.
"""
