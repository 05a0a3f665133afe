"""Least privilege: the tables' owner migrates and runs ``pgjobs grant ROLE``; the Procfile's
worker and beat, a producer and the operator commands then run as ROLE, a login role without
superuser, CREATEDB or CREATEROLE, which can do no DDL."""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from config.grants import NOT_GRANTED, SEQUENCES, TABLES
from tests.acceptance.conftest import BIN, Processes, procfile
from tests.acceptance.conftest import smtp_inbox as smtp_inbox  # a fixture
from tests.acceptance.deploy_scenario import run_deployment
from tests.polling import wait_until
from tests.tasks.task_helpers import free_port
from tests.test_database_errors import one_line_failure

pytestmark = pytest.mark.acceptance

# Every privilege on the database's relations and schema, to compare before and after.
ACL = """
SELECT c.relname, c.relacl::text FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1
"""
OWNED = ("SELECT count(*) FROM pg_class"
         " WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)")
DDL = [
    "CREATE TABLE pgjobs_probe (id int)",
    "CREATE INDEX ON pgjobs_broker_message (created_at)",
    "ALTER TABLE pgjobs_broker_message ADD COLUMN probe int",
    "DROP TABLE pgjobs_chord_part",
    "TRUNCATE pgjobs_broker_message",
    "CREATE FUNCTION pgjobs_probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
]


def _admin(url: str, statement: sql.Composable | str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def runtime_role(db_url: str, pg_server_url: str) -> Iterator[str]:
    """A login role with no other attribute and no privilege yet; dropped afterwards."""
    name = f"pgjobs_app_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    _admin(pg_server_url, sql.SQL(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION").format(role))
    yield name
    _admin(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
           (name,))
    _admin(db_url, sql.SQL("DROP OWNED BY {}").format(role))  # its grants in this database
    _admin(pg_server_url, sql.SQL("DROP ROLE {}").format(role))


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


def pgjobs(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([str(BIN / "pgjobs"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class OwnerReleases(Processes):
    """The Procfile's processes as the runtime role, but its release phase as the tables'
    owner followed by ``pgjobs grant``, as a deployment with two roles runs it."""

    owner_url: str = ""
    role: str = ""
    released: list[subprocess.CompletedProcess] = field(default_factory=list)

    def run(self, name: str) -> subprocess.CompletedProcess:
        if name != "release":
            return super().run(name)
        env = {**self.env, "DATABASE_URL": self.owner_url}
        for command in (shlex.split(procfile()["release"]),
                        [str(BIN / "pgjobs"), "grant", self.role]):
            done = subprocess.run(command, env=env, cwd=self.logdir, capture_output=True,
                                  text=True, timeout=120)
            self.released.append(done)
            if done.returncode != 0:
                break
        return done


@pytest.fixture
def role_processes(db_url: str, runtime_role: str, smtp_inbox,
                   tmp_path: Path) -> Iterator[OwnerReleases]:
    _, smtp_url = smtp_inbox
    env = {**os.environ, "DATABASE_URL": as_role(db_url, runtime_role), "SMTP_URL": smtp_url,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    processes = OwnerReleases(env=env, logdir=tmp_path, owner_url=db_url, role=runtime_role)
    try:
        yield processes
    finally:
        processes.stop_all()


def test_worker_beat_producer_and_operators_run_as_a_granted_role_that_cannot_do_ddl(
        role_processes: OwnerReleases, smtp_inbox, db_url: str, runtime_role: str) -> None:
    inbox, _ = smtp_inbox
    role_url = role_processes.env["DATABASE_URL"]

    # Given the owner's release phase (migrate, then grant), when the worker, beat and a
    # producer run as the role: every email goes out once, the awaited result comes back,
    # and beat fires its tick (all asserted by the scenario)
    run_deployment(role_processes, inbox)
    assert "no DDL" in role_processes.released[-1].stdout, role_processes.released

    # Then the operator commands work as the role too, while the worker and beat run
    node = f"celery@{os.uname().nodename}"
    commands = [("status",), ("health", "worker", "--hostname", node), ("health", "beat"),
                ("dead", "list"), ("failed", "list"), ("cleanup", "--dry-run"),
                ("schedule", "list"), ("schedule", "remove", "once")]
    env = {**role_processes.env}
    running = [subprocess.Popen([str(BIN / "pgjobs"), *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for args in commands]
    for args, process in zip(commands, running, strict=True):
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"pgjobs {' '.join(args)}: {out}{err}"
    assert _metrics_database_up(env, role_processes.logdir) == 1

    # And no process ever met a permission it lacked
    logs = "\n".join(p.read_text(errors="replace") for p in role_processes.logdir.glob("*.log"))
    assert "permission denied" not in logs.lower()

    # And the role owns nothing and may change no table's shape
    assert _admin(db_url, OWNED, (runtime_role,)) == [(0,)]
    with psycopg.connect(role_url, autocommit=True) as conn:
        for statement in DDL:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def _metrics_database_up(env: dict[str, str], logdir: Path) -> float:
    """``pgjobs_database_up`` of one scrape of a ``pgjobs metrics`` server run as the role."""
    port = free_port()
    log = logdir / "metrics.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(BIN / "pgjobs"), "metrics", "--port", str(port),
                                   "--address", "127.0.0.1"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "serving metrics" in log.read_text(), 30, "the metrics server",
                   log.read_text)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.kill()
        server.wait(timeout=10)
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("pgjobs_database_up ")))


def test_the_plan_names_every_relation_the_migrations_create(db_url: str) -> None:
    # Given a database at the latest migration, every relation in it is either granted or
    # left out on purpose: a migration adding a table must say which (config/grants.py)
    found = {name for (name,) in _admin(db_url, "SELECT relname FROM pg_class WHERE "
                                        "relnamespace = 'public'::regnamespace AND relkind IN "
                                        "('r', 'p', 'S', 'v', 'm', 'f')")}
    planned = set(TABLES) | set(SEQUENCES)
    assert found == planned | set(NOT_GRANTED)
    assert not planned & set(NOT_GRANTED)


def test_granting_twice_changes_nothing_and_migrate_names_a_role_left_behind(
        db_url: str, runtime_role: str) -> None:
    # Given the role was granted once
    assert pgjobs(db_url, "grant", runtime_role).returncode == 0
    granted = _admin(db_url, ACL)

    # When it is granted again, nothing changes
    again = pgjobs(db_url, "grant", runtime_role)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""  # a plain login role: nothing to warn about
    assert _admin(db_url, ACL) == granted
    assert "lacks" not in pgjobs(db_url, "migrate").stdout

    # When a release adds a relation the role has no grant on yet (one revoked here),
    # migrate says to grant again, and a grant puts it right
    _admin(db_url, sql.SQL("REVOKE INSERT ON pgjobs_beat_tick FROM {}").format(
        sql.Identifier(runtime_role)))
    migrated = pgjobs(db_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"run `pgjobs grant {runtime_role}`" in migrated.stdout
    assert pgjobs(db_url, "grant", runtime_role).returncode == 0
    assert _admin(db_url, ACL) == granted


def test_signal_backend_only_when_asked(db_url: str, runtime_role: str) -> None:
    member = ("SELECT pg_has_role(%s, 'pg_signal_backend', 'MEMBER')", (runtime_role,))
    assert pgjobs(db_url, "grant", runtime_role).returncode == 0
    assert _admin(db_url, *member) == [(False,)]
    assert pgjobs(db_url, "grant", runtime_role, "--signal-backend").returncode == 0
    assert _admin(db_url, *member) == [(True,)]


@pytest.mark.parametrize(("who", "target", "complaint"), [
    ("owner", "no_such_role", "role 'no_such_role' does not exist: create it first"),
    ("owner", "postgres-owner", "owns the pgjobs tables: grant a separate role"),
    ("role", "role", "cannot grant on the pgjobs tables"),
])
def test_bad_grant_says_why_in_one_line_and_grants_nothing(
        db_url: str, runtime_role: str, who: str, target: str, complaint: str) -> None:
    owner = make_url(db_url).username
    target = {"role": runtime_role, "postgres-owner": owner}.get(target, target)
    url = db_url if who == "owner" else as_role(db_url, runtime_role)
    before = _admin(db_url, ACL)

    failed = pgjobs(url, "grant", target)

    assert complaint in one_line_failure(failed)
    assert _admin(db_url, ACL) == before


def test_a_role_that_may_still_create_tables_is_granted_with_a_warning(
        db_url: str, runtime_role: str) -> None:
    # Given a role that may create tables in the schema (as PUBLIC could before PostgreSQL 15)
    _admin(db_url, sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
        sql.Identifier(runtime_role)))

    granted = pgjobs(db_url, "grant", runtime_role)

    assert granted.returncode == 0, granted.stderr
    assert f"warning: role '{runtime_role}' may still create tables in schema 'public'" in (
        granted.stderr)


@pytest.mark.parametrize(("process", "granted", "complaint"), [
    ("worker", "all but DELETE on pgjobs_broker_message",
     "lacks DELETE on pgjobs_broker_message that pgjobs needs"),
    ("beat", "nothing", "more privileges that pgjobs needs"),
    ("worker", "nothing, not even USAGE on the schema",
     "lacks USAGE on schema public that pgjobs needs"),
])
def test_a_role_lacking_a_privilege_stops_start_up_with_one_line(
        db_url: str, runtime_role: str, process: str, granted: str, complaint: str,
        tmp_path: Path) -> None:
    # Given a role granted part of what pgjobs needs, or nothing
    if granted.startswith("all"):
        assert pgjobs(db_url, "grant", runtime_role).returncode == 0
        _admin(db_url, sql.SQL("REVOKE DELETE ON pgjobs_broker_message FROM {}").format(
            sql.Identifier(runtime_role)))
    if "schema" in granted:  # the search path then skips the schema: no tables to be seen
        _admin(db_url, "REVOKE USAGE ON SCHEMA public FROM PUBLIC")

    # When a worker or a beat starts as that role
    env = {"DATABASE_URL": as_role(db_url, runtime_role), "PATH": ""}
    started = subprocess.run([str(BIN / "celery"), "-A", "config", process], env=env,
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)

    # Then it stops at once, in one line naming what is missing and the command that grants it
    assert started.returncode != 0
    assert "Traceback" not in started.stderr
    line = started.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pgjobs: DATABASE_URL: role {runtime_role} lacks "), line
    assert complaint in line, line
    assert line.endswith(f"run `pgjobs grant {runtime_role}` with the DATABASE_URL that "
                         "`pgjobs migrate` runs with"), line


def test_a_direct_url_whose_role_lacks_the_grants_stops_start_up(
        db_url: str, runtime_role: str, tmp_path: Path) -> None:
    # Given DATABASE_URL as the owner, and DATABASE_DIRECT_URL (beat's lock and lease, the
    # LISTEN connections) as a role granted nothing
    env = {"DATABASE_URL": db_url, "DATABASE_DIRECT_URL": as_role(db_url, runtime_role),
           "PATH": ""}

    started = subprocess.run([str(BIN / "celery"), "-A", "config", "beat"], env=env,
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert started.returncode != 0
    line = started.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pgjobs: DATABASE_DIRECT_URL: role {runtime_role} lacks "), line
    assert line.endswith(f"run `pgjobs grant {runtime_role}` with the DATABASE_URL that "
                         "`pgjobs migrate` runs with"), line
