"""``pgjobs grant ROLE``: what workers, beats, producers and operator commands need, and no DDL.

:data:`TABLES` and :data:`SEQUENCES` are the plan: every relation the migrations create that
pgjobs uses at run time, with the privileges its statements need (broker/queries.sql,
broker/admin.sql, broker/results/queries.sql, beat/queries.py, beat/store.py and
sqlalchemy-celery-beat's models, config/ops/queries.sql, tasks/queries.py and the built-in
retention rules). The role gets USAGE on the schema, never CREATE, and owns nothing, so it
cannot create, alter or drop a table.

The plan names pgjobs' relations one by one rather than "every table in the schema": pgjobs
usually shares its database and schema with the application, whose tables are not pgjobs'
to give away. So after an upgrade whose migrations add a table, ``pgjobs grant`` runs again;
``pgjobs migrate`` names the roles that need it (:func:`roles_behind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import click
import psycopg
from psycopg import sql

from broker.queries import _parse
from config.errors import one_line
from config.ops.common import OneLineCommand, database_errors, settings
from config.settings import SettingsError
from config.urls import with_connect_timeout

QUERIES: dict[str, str] = _parse(files("config").joinpath("grants.sql").read_text("utf-8"))

_ALL = ("SELECT", "INSERT", "UPDATE", "DELETE")
_NO_UPDATE = ("SELECT", "INSERT", "DELETE")
_NO_DELETE = ("SELECT", "INSERT", "UPDATE")

# SELECT ... FOR UPDATE and FOR SHARE need UPDATE, and INSERT ... ON CONFLICT DO UPDATE
# needs it too. Foreign-key checks and ON DELETE CASCADE run as the tables' owner.
TABLES: dict[str, tuple[str, ...]] = {
    # Broker: claims, heartbeats and rescues lock and update rows.
    "pgjobs_broker_consumer": _ALL,
    "pgjobs_broker_message": _ALL,
    "pgjobs_broker_queue": _ALL,
    # Declared, then deleted (with their queue, on unbind, on retry or purge); never changed.
    "pgjobs_broker_exchange": _NO_UPDATE,
    "pgjobs_broker_binding": _NO_UPDATE,
    "pgjobs_broker_subscription": _NO_UPDATE,
    "pgjobs_broker_dead_letter": _NO_UPDATE,
    # Result backend: results and chord counters are upserted, and deleted by retention.
    "celery_taskmeta": _ALL,
    "celery_tasksetmeta": _ALL,
    "pgjobs_chord": _ALL,
    "pgjobs_chord_part": _NO_UPDATE,
    # Tasks: the sent-email lease, durable revokes.
    "pgjobs_sent_email": _ALL,
    "pgjobs_revoked_task": _NO_UPDATE,
    # Beat and `pgjobs schedule`. A policy goes with its entry (ON DELETE CASCADE).
    "pgjobs_beat_tick": _ALL,
    "pgjobs_beat_leader": _NO_DELETE,
    "pgjobs_beat_policy": _NO_DELETE,
    "celery_periodictask": _ALL,
    "celery_periodictaskchanged": _NO_DELETE,
    # `pgjobs schedule add` finds or adds a schedule row; none is ever changed or deleted.
    "celery_crontabschedule": ("SELECT", "INSERT"),
    "celery_intervalschedule": ("SELECT", "INSERT"),
    "celery_clockedschedule": ("SELECT", "INSERT"),
    # pgjobs never adds a solar schedule, but beat loads one that exists.
    "celery_solarschedule": ("SELECT",),
}

SEQUENCES: tuple[str, ...] = (
    "task_id_sequence",  # celery_taskmeta.id
    "taskset_id_sequence",  # celery_tasksetmeta.id
    "celery_periodictask_id_seq",
    "celery_crontabschedule_id_seq",
    "celery_intervalschedule_id_seq",
    "celery_clockedschedule_id_seq",
)
"""Sequences behind the defaults of the columns pgjobs inserts into: USAGE (nextval)."""

NOT_GRANTED: dict[str, str] = {
    "alembic_version": "only `pgjobs migrate` reads or writes it",
    "pgjobs_broker_message_id_seq": "an identity column: INSERT on its table is enough",
    "pgjobs_chord_part_arrival_seq": "an identity column: INSERT on its table is enough",
    "celery_periodictaskchanged_id_seq": "its one row is always written with id 1",
    "celery_solarschedule_id_seq": "pgjobs never adds a solar schedule",
}
"""Relations the migrations create that the runtime role needs nothing on, and why."""


_SIGNAL_ADVICE = ("granting pg_signal_backend takes a superuser (or a role with its "
                     "admin option); leave out --signal-backend, or ask one to run "
                     "GRANT pg_signal_backend TO the role")


class GrantError(Exception):
    """Nothing was granted; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class Granted:
    schema: str
    warnings: list[str]


def grant(url: str, role: str, *, signal_backend: bool = False) -> Granted:
    """Grant ``role`` the plan on the database at ``url``, in one transaction; GrantError
    (and nothing granted) when the tables are missing, this session may not grant on them,
    or ``role`` does not exist or owns them. Running it again changes nothing."""
    with _connect(url) as conn, conn.transaction():
        schema = _schema_to_grant_on(conn)
        warnings = _standing(conn, role, schema)
        conn.execute(QUERIES["serialise"])
        for statement in _statements(role, schema, signal_backend):
            conn.execute(statement)
    return Granted(schema, warnings)


def roles_behind(url: str) -> list[str]:
    """Roles that were granted some of the plan and lack part of it: after an upgrade whose
    migrations added a relation, they need ``pgjobs grant`` again."""
    with _connect(url) as conn:
        found = conn.execute(QUERIES["pgjobs_schema"]).fetchone()
        if found is None:
            return []
        schema = found[0]
        roles = [row[0] for row in conn.execute(
            QUERIES["granted_roles"], {"schema": schema, "tables": list(TABLES)})]
        return [role for role in roles if missing_privileges(conn, schema, role)]


def missing_privileges(conn: psycopg.Connection, schema: str, role: str) -> list[tuple[str, str]]:
    """The (relation, privilege) pairs of the plan that ``role`` lacks in ``schema``."""
    return [(relation, privilege) for relation, privilege, _ in _lacking(conn, schema, role)]


def privileges_lacking(conn: psycopg.Connection) -> tuple[str, list[tuple[str, str]]] | None:
    """This session's role and the (relation, privilege) pairs of the plan it lacks on the
    pgjobs relations there are (one not migrated yet is for the schema checks to report);
    None when this database has no pgjobs tables."""
    found = conn.execute(QUERIES["pgjobs_schema"]).fetchone()
    if found is None:
        hidden = conn.execute(QUERIES["pgjobs_schema_unusable"]).fetchone()
        return None if hidden is None else (hidden[1], [(f"schema {hidden[0]}", "USAGE")])
    schema, role = found[0], found[3]
    return role, [(relation, privilege)
                  for relation, privilege, absent in _lacking(conn, schema, role) if not absent]


def _lacking(conn: psycopg.Connection, schema: str, role: str) -> list[tuple[str, str, bool]]:
    pairs = [(table, privilege) for table, privileges in TABLES.items()
             for privilege in privileges]
    pairs += [(sequence, "USAGE") for sequence in SEQUENCES]
    return [tuple(row) for row in conn.execute(QUERIES["missing_privileges"], {
        "schema": schema, "role": role, "relations": [r for r, _ in pairs],
        "privileges": [p for _, p in pairs],
        "sequence": [r in SEQUENCES for r, _ in pairs]})]


def _connect(url: str) -> psycopg.Connection:
    # No server-side prepared statements: the release phase may go through PgBouncer.
    return psycopg.connect(with_connect_timeout(url), prepare_threshold=None)


def _schema_to_grant_on(conn: psycopg.Connection) -> str:
    found = conn.execute(QUERIES["pgjobs_schema"]).fetchone()
    if found is None:
        raise GrantError("the pgjobs tables are not in this database (or not on its "
                         "search_path): run `pgjobs migrate` first")
    schema, owner, may_grant, _ = found
    if not may_grant:
        raise GrantError(f"this session's role cannot grant on the pgjobs tables, which "
                         f"{owner} owns: run `pgjobs grant` with the DATABASE_URL that "
                         "`pgjobs migrate` runs with")
    return schema


def _standing(conn: psycopg.Connection, role: str, schema: str) -> list[str]:
    """What to warn about ``role``; GrantError when it does not exist or owns the tables."""
    found = conn.execute(QUERIES["role_standing"], {"role": role}).fetchone()
    if found is None:
        raise GrantError(f"role {role!r} does not exist: create it first (CREATE ROLE ... "
                         "LOGIN PASSWORD ...), then run `pgjobs grant` again")
    superuser, is_owner, acts_as_owner, can_create = found
    if is_owner:
        raise GrantError(f"role {role!r} owns the pgjobs tables: grant a separate role for "
                         "workers, beats and producers to connect as")
    warnings = []
    if superuser:
        warnings.append(f"role {role!r} is a superuser: it may do anything, DDL included")
    elif acts_as_owner:
        warnings.append(f"role {role!r} belongs to the role owning the pgjobs tables, and so "
                        "may alter and drop them")
    if can_create and not superuser:
        warnings.append(f"role {role!r} may still create tables in schema {schema!r}, through "
                        "PUBLIC (as before PostgreSQL 15) or a role it belongs to: `REVOKE "
                        f"CREATE ON SCHEMA {schema} FROM PUBLIC` takes PUBLIC's away")
    return warnings


def _statements(role: str, schema: str, signal_backend: bool) -> list[sql.Composed]:
    names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
    statements = [sql.SQL(QUERIES["grant_schema"]).format(**names)]
    for privileges in dict.fromkeys(TABLES.values()):
        tables = [table for table, wanted in TABLES.items() if wanted == privileges]
        statements.append(sql.SQL(QUERIES["grant_tables"]).format(
            privileges=sql.SQL(", ").join(map(sql.SQL, privileges)),
            relations=_relations(schema, tables), **names))
    statements.append(sql.SQL(QUERIES["grant_sequences"]).format(
        relations=_relations(schema, SEQUENCES), **names))
    if signal_backend:
        statements.append(sql.SQL(QUERIES["grant_signal_backend"]).format(**names))
    return statements


def _relations(schema: str, names: tuple[str, ...] | list[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(schema, name) for name in names)


@click.command(name="grant", cls=OneLineCommand)
@click.argument("role")
@click.option("--signal-backend", is_flag=True,
              help="Also grant pg_signal_backend, which may end any non-superuser session: "
                   "needed only when beats connect as different roles.")
def grant_command(role: str, signal_backend: bool) -> None:
    """Give an existing ROLE what workers, beats, producers and the operator commands need,
    and no DDL. Run it as `pgjobs migrate` runs, and again after upgrades."""
    try:
        current = settings()
        url = current.require_direct_url()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    with database_errors(url, current.direct_url_name):
        try:
            granted = grant(url, role, signal_backend=signal_backend)
        except GrantError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.errors.InsufficientPrivilege as error:
            if not signal_backend:
                raise
            raise click.ClickException(f"{one_line(error)}: {_SIGNAL_ADVICE}") from None
    for warning in granted.warnings:
        click.echo(f"pgjobs: warning: {warning}", err=True)
    click.echo(f"pgjobs: role {role} may run workers, beats, producers and operator commands "
               f"on schema {granted.schema} ({len(TABLES)} tables, {len(SEQUENCES)} sequences"
               f"{', pg_signal_backend' if signal_backend else ''}), and no DDL")
