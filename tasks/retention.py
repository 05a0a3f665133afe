"""Nightly retention: which rows are too old, checked against the catalogue, deleted in batches.

A rule is (table, timestamp column, maximum age). Every rule is checked against the
database catalogue before anything is deleted: the table must exist and be an
ordinary table, the column must exist and be a ``timestamptz``, ``timestamp`` or
``date``. Names only reach SQL as ``psycopg.sql.Identifier`` built from what the
catalogue returned.

``timestamp`` columns (without time zone) hold UTC, as Celery's ``date_done`` does, so
they are compared with the cutoff in UTC; ``timestamptz`` columns with the cutoff as an
instant; ``date`` columns with the UTC calendar day of the cutoff. The cutoff comes
from the database clock, read once per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from psycopg import sql
from sqlalchemy import Connection, Engine

from config.settings import RetentionRule, Settings
from tasks import queries
from tasks.errors import RetentionConfigError

logger = logging.getLogger(__name__)

BUILT_IN = "built in"
CONFIGURED = "RETENTION_TABLES"
_TIME_TYPES = {"timestamptz", "timestamp", "date"}


@dataclass(frozen=True)
class Rule:
    """A retention rule and where it comes from (built in, or RETENTION_TABLES)."""

    table: str
    column: str
    max_age_days: float
    source: str = CONFIGURED


@dataclass(frozen=True)
class Target:
    """A rule whose table and column were found in the catalogue."""

    rule: Rule
    schema: str
    column_type: str

    @property
    def names(self) -> dict[str, sql.Identifier]:
        return {
            "table": sql.Identifier(self.schema, self.rule.table),
            "column": sql.Identifier(self.rule.column),
        }


def rules_from(settings: Settings) -> list[Rule]:
    """The built-in rules (results, group results, chord counters, sent-email log, dead
    letters, revokes), then RETENTION_TABLES."""
    results, emails = settings.result_retention_days, settings.sent_email_retention_days
    built_in = [
        Rule("celery_taskmeta", "date_done", results, BUILT_IN),
        Rule("celery_tasksetmeta", "date_done", results, BUILT_IN),
        # A chord's parts go with it (ON DELETE CASCADE).
        Rule("pgjobs_chord", "created_at", results, BUILT_IN),
        Rule("pgjobs_sent_email", "sent_at", emails, BUILT_IN),
        Rule("pgjobs_broker_dead_letter", "died_at", settings.dead_letter_retention_days,
             BUILT_IN),
        Rule("pgjobs_revoked_task", "revoked_at", settings.revoke_retention_days, BUILT_IN),
    ]
    return built_in + [_configured(rule) for rule in settings.retention_tables]


def _configured(rule: RetentionRule) -> Rule:
    return Rule(rule.table, rule.column, rule.max_age_days, CONFIGURED)


def resolve(connection: Connection, rules: Iterable[Rule]) -> list[Target]:
    """Check every rule against the catalogue; RetentionConfigError names the first bad one."""
    return [_resolve_one(connection, rule) for rule in rules]


def _resolve_one(connection: Connection, rule: Rule) -> Target:
    found = connection.execute(
        queries.DESCRIBE_RETENTION_TARGET, {"table": rule.table, "column": rule.column}
    ).first()
    if found is None:
        raise _rule_error(rule, f"names table {rule.table!r}, which does not exist")
    if found.kind != "r":
        raise _rule_error(rule, f"names {rule.table!r}, which is not an ordinary table")
    if found.column_type is None:
        raise _rule_error(rule, f"names column {rule.column!r}, which {rule.table!r} lacks")
    if found.column_type not in _TIME_TYPES:
        raise _rule_error(
            rule,
            f"names column {rule.table}.{rule.column} of type {found.column_type}, "
            "which is not a date or timestamp",
        )
    return Target(rule, found.schema_name, found.column_type)


def _rule_error(rule: Rule, problem: str) -> RetentionConfigError:
    if rule.source == BUILT_IN:
        advice = "run `pgjobs migrate` to create the pgjobs tables"
    else:
        advice = "fix or remove that rule in RETENTION_TABLES; nothing was deleted"
    return RetentionConfigError(f"{rule.source} retention rule {problem}: {advice}")


def database_now(connection: Connection) -> datetime:
    """The database clock, as an aware datetime."""
    return connection.execute(queries.DATABASE_NOW).scalar_one()


def cutoff_for(target: Target, now: datetime) -> datetime | date:
    """The value below which ``target``'s column counts as expired, in the column's own type."""
    instant = now - timedelta(days=target.rule.max_age_days)
    if target.column_type == "timestamptz":
        return instant
    naive_utc = instant.astimezone(UTC).replace(tzinfo=None)
    return naive_utc if target.column_type == "timestamp" else naive_utc.date()


def count_expired(engine: Engine, target: Target, cutoff: datetime | date) -> int:
    """How many rows ``delete_expired`` would delete now."""
    with engine.connect() as connection:
        statement = _render(connection, queries.COUNT_EXPIRED.format(**target.names))
        return connection.exec_driver_sql(statement, {"cutoff": cutoff}).scalar_one()


def delete_expired(engine: Engine, target: Target, cutoff: datetime | date, batch: int) -> int:
    """Delete expired rows, ``batch`` per short transaction, until none is left; the total."""
    total = 0
    while True:
        deleted = _delete_batch(engine, target, cutoff, batch)
        total += deleted
        if deleted < batch:
            return total


def _delete_batch(engine: Engine, target: Target, cutoff: datetime | date, batch: int) -> int:
    with engine.begin() as connection:
        statement = _render(connection, queries.DELETE_EXPIRED_BATCH.format(**target.names))
        result = connection.exec_driver_sql(statement, {"cutoff": cutoff, "batch_size": batch})
        return result.rowcount


def _render(connection: Connection, statement: sql.Composed) -> str:
    # Quoting identifiers needs the driver connection's encoding; values stay parameters.
    return statement.as_string(connection.connection.driver_connection)


def apply_rules(engine: Engine, rules: list[Rule], batch: int, dry_run: bool,
                each: Callable[[list[Target]], Iterable[Target]] = iter) -> dict[str, int]:
    """Check all rules, then count (dry run) or delete expired rows; rows per table.
    ``each`` walks the checked targets (a progress bar may wrap them)."""
    with engine.connect() as connection:
        targets = resolve(connection, rules)
        now = database_now(connection)
    counts: dict[str, int] = {}
    for target in each(targets):
        cutoff = cutoff_for(target, now)
        if dry_run:
            done = count_expired(engine, target, cutoff)
        else:
            done = delete_expired(engine, target, cutoff, batch)
        counts[target.rule.table] = counts.get(target.rule.table, 0) + done
        _log(target, cutoff, done, dry_run)
    return counts


def _log(target: Target, cutoff: datetime | date, rows: int, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "deleted"
    logger.info(
        "retention: %s %d rows of %s with %s before %s",
        verb, rows, target.rule.table, target.rule.column, cutoff.isoformat(),
    )
