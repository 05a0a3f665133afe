"""The ``pgjobs`` command line: ``dev``, ``migrate`` and ``schedule``."""

from __future__ import annotations

import logging

import click
from sqlalchemy.exc import SQLAlchemyError

from beat.cli import schedule
from broker.urls import redact
from config.errors import database_error
from config.settings import Settings, SettingsError, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _direct_url() -> str:
    """DATABASE_DIRECT_URL (or DATABASE_URL): migrations hold a session's advisory lock."""
    try:
        return _settings().require_direct_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _prepare(database_url: str) -> None:
    """Bring the schema up to date and install the default schedule entries."""
    from beat.schedule import sync_default_entries
    from config.checks import check_database
    from config.migrate import upgrade

    try:
        check_database(database_url)
        upgrade(database_url)
        sync_default_entries(database_url)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(f"database error: {database_error(error)}") from None


@click.group()
def main() -> None:
    """pgjobs: background jobs on Celery with PostgreSQL as the only service."""


@main.command()
def migrate() -> None:
    """Create or upgrade every pgjobs table. Safe to run twice, or from two hosts at once."""
    url = _direct_url()
    _prepare(url)
    click.echo("pgjobs: database is up to date")
    _hint_grants(url)


def _hint_grants(url: str) -> None:
    """Name the roles granted before that this release's tables need granting to again."""
    import psycopg

    from config.errors import one_line
    from config.grants import roles_behind

    try:
        behind = roles_behind(url)
    except psycopg.Error as error:  # advice only: the migration itself succeeded
        click.echo(f"pgjobs: could not check the runtime roles' grants ({one_line(error)})",
                   err=True)
        return
    for role in behind:
        click.echo(f"pgjobs: role {role} lacks privileges on this release's tables: "
                   f"run `pgjobs grant {role}`")


@main.command()
@click.option("--concurrency", "-c", default=2, show_default=True, help="Worker processes.")
@click.option("--no-beat", is_flag=True, help="Run the worker only.")
def dev(concurrency: int, no_beat: bool) -> None:
    """Run a worker and beat locally; with no DATABASE_URL, on an embedded PostgreSQL."""
    from config.dev import celery_commands, database_for, run_processes, sigterm_as_interrupt

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with sigterm_as_interrupt(), database_for(settings) as database_url:
        if not settings.database_url:
            click.echo(f"pgjobs: embedded PostgreSQL in {settings.data_dir}, "
                       f"DATABASE_URL={redact(database_url)}")
        _prepare(database_url)
        commands = celery_commands(concurrency, settings.log_level, beat=not no_beat)
        code = run_processes(commands, database_url)
    raise SystemExit(code)


main.add_command(schedule)

from config.grants import grant_command as _grant  # noqa: E402

main.add_command(_grant)

# Operator commands (config/ops/).
from config.ops.commands import register as _register_ops  # noqa: E402

_register_ops(main)
