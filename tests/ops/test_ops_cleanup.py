"""``pgjobs cleanup [--dry-run]`` and progress bars: on a terminal only."""

from __future__ import annotations

import os
import pty
import subprocess

from ops_helpers import one_line_error
from processes import BIN, process_env

OLD_DEAD_LETTERS = (
    "INSERT INTO pgjobs_broker_dead_letter (id, queue, priority, deliveries, payload, reason,"
    " created_at, died_at) SELECT n, 'q', 0, 1, '{}', 'r', now(),"
    " now() - CASE WHEN n <= 3 THEN interval '20 days' ELSE interval '1 day' END"
    " FROM generate_series(1, 5) AS n"
)


def dead_count(sql) -> int:
    return sql("SELECT count(*) FROM pgjobs_broker_dead_letter")[0][0]


def test_dry_run_counts_then_cleanup_deletes(cli, sql):
    # Given five dead letters, three of them older than the 14-day retention
    sql(OLD_DEAD_LETTERS)

    # When a dry run, then a real run, clean up
    dry = cli("cleanup", "--dry-run")
    real = cli("cleanup")

    # Then the dry run only counted, and the real run deleted the three
    assert dry.exit_code == 0 and real.exit_code == 0, dry.output + real.output
    assert "pgjobs_broker_dead_letter: would delete 3 rows" in dry.stdout.splitlines()
    assert "pgjobs_broker_dead_letter: deleted 3 rows" in real.stdout.splitlines()
    assert real.stdout.splitlines()[-1] == "total: deleted 3 rows"
    assert dead_count(sql) == 2


def test_a_bad_rule_is_one_line_and_deletes_nothing(cli, sql):
    sql(OLD_DEAD_LETTERS)
    rule = '[{"table": "nope", "column": "x", "max_age_days": 1}]'
    line = one_line_error(cli("cleanup", env={"RETENTION_TABLES": rule}))
    assert "names table 'nope', which does not exist" in line
    assert dead_count(sql) == 5


def run_on_terminal(app_db: str, *args: str) -> str:
    """Run ``pgjobs ARGS`` with stdout and stderr on a pseudo-terminal; all it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([str(BIN / "pgjobs"), *args], env=process_env(app_db),
                               stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0, b"".join(chunks)
    return b"".join(chunks).decode(errors="replace")


def test_progress_shows_on_a_terminal_and_not_in_a_pipe(app_db, cli, sql):
    # Given dead letters
    sql(OLD_DEAD_LETTERS)

    # When they are retried on a terminal, Then a progress bar is drawn
    assert "retrying" in run_on_terminal(app_db, "dead", "retry", "--all", "--queue", "q")

    # When cleanup runs in a pipe (a log), Then it prints its result lines only
    piped = cli("cleanup")
    assert "cleaning up" not in piped.output and "%" not in piped.output
