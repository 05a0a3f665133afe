"""``pgjobs schedule``: inspect and edit the database schedule."""

import click


@click.group()
def schedule() -> None:
    """Inspect and edit the recurring schedule stored in PostgreSQL."""
