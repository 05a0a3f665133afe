"""``pgjobs migrate``: what it applied, and which URL it (or ``pgjobs grant``) could not reach."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from ops_helpers import one_line_error

from config.migrate import alembic_config, upgrade


def migrate(cli, url: str) -> str:
    result = cli("migrate", env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


def test_each_run_says_what_it_applied(cli, empty_db):
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    # When an empty database is migrated, Then it says the tables were created, and at which
    # revision; When migrated again, Then there was nothing to do
    assert migrate(cli, empty_db) == f"pgjobs: created the pgjobs tables (revision {head})"
    assert migrate(cli, empty_db) == "pgjobs: database is up to date"


def test_an_upgrade_names_both_revisions(cli, empty_db):
    # Given a database one revision behind
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_revision(script.get_current_head())
    upgrade(empty_db, head.down_revision)

    # When it is migrated, Then it names where it was and where it is now
    assert migrate(cli, empty_db) == (
        f"pgjobs: migrated the database from revision {head.down_revision} to {head.revision}")


@pytest.mark.parametrize("command", [["migrate"], ["grant", "somebody"]])
def test_an_unreachable_direct_url_is_named_as_such(cli, command):
    # Given a DATABASE_DIRECT_URL (which migrations and grants use) that cannot be reached
    result = cli(*command, env={"DATABASE_DIRECT_URL": "postgresql://postgres:pw@127.0.0.1:1/x"})

    # Then the one line names DATABASE_DIRECT_URL, never DATABASE_URL, and masks the password
    line = one_line_error(result)
    assert result.exit_code == 1
    assert line.startswith(
        "Error: DATABASE_DIRECT_URL: cannot connect to postgresql://postgres:**@127.0.0.1:1/x")
    assert line.endswith("check that PostgreSQL is running and the host and port in "
                         "DATABASE_DIRECT_URL are right")
    assert "DATABASE_URL" not in line.replace("DATABASE_DIRECT_URL", "")
    assert ":pw@" not in line
