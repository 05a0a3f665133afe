"""``pgjobs cleanup``: run the nightly retention (``tasks.delete_old_data``) now, in the
foreground, with a progress bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from config.ops.common import OneLineCommand, database_errors, database_url, settings


@click.command(cls=OneLineCommand)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def cleanup(dry_run: bool) -> None:
    """Delete rows older than their retention now (results, emails, dead letters, ...)."""
    from tasks.db import engine
    from tasks.errors import RetentionConfigError
    from tasks.retention import apply_rules, rules_from

    current = settings()
    url = database_url()
    try:
        with database_errors(url):
            counts = apply_rules(engine(), rules_from(current), current.retention_batch_size,
                                 dry_run, each=_progress)
    except RetentionConfigError as error:
        raise click.ClickException(str(error)) from None
    verb = "would delete" if dry_run else "deleted"
    for table, rows in counts.items():
        click.echo(f"{table}: {verb} {rows} row{'s' if rows != 1 else ''}")
    click.echo(f"total: {verb} {sum(counts.values())} rows")


def _progress(targets: list) -> Iterable:
    if not sys.stderr.isatty():
        yield from targets
        return
    with click.progressbar(targets, label="cleaning up", file=sys.stderr,
                           item_show_func=lambda t: t.rule.table if t else None) as bar:
        yield from bar
