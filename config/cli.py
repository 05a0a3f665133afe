"""The ``pgjobs`` command line."""

from __future__ import annotations

import click

from beat.cli import schedule
from config.settings import SettingsError, get_settings


@click.group()
def main() -> None:
    """pgjobs: background jobs on Celery with PostgreSQL as the only service."""


@main.command()
def migrate() -> None:
    """Create or upgrade every pgjobs table. Safe to run twice, or from two hosts at once."""
    from config.migrate import upgrade

    try:
        url = get_settings().require_database_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    upgrade(url)
    click.echo("pgjobs: database is up to date")


main.add_command(schedule)
