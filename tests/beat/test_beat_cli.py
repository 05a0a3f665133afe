"""``pgjobs schedule`` against a real database, via click's CliRunner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from beat_helpers import drain, rows, snapshot
from click.testing import CliRunner

from beat.cli import schedule
from beat.schedule import sync_default_entries

QUEUE = "beat-cli"
TASK = "beat_test.record"


def invoke(*args: str):
    return CliRunner().invoke(schedule, list(args))


def add_tick(name: str = "tick", *extra: str):
    result = invoke("add", name, "--task", "beat_test.record", "--every", "30", "--queue", QUEUE,
                    *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("args", "complaint"), [
    (["add", "x", "--task", TASK, "--cron", "61 4 * * *"], "cron expression '61 4 * * *'"),
    (["add", "x", "--task", TASK, "--cron", "0 4 * *"], "must have 5 fields"),
    (["add", "x", "--task", TASK, "--cron", "0 4 * * *", "--timezone", "Mars/Olympus"],
     "unknown time zone 'Mars/Olympus'"),
    (["add", "x", "--task", TASK, "--every", "5", "--timezone", "Mars/Olympus"],
     "unknown time zone 'Mars/Olympus'"),
    (["add", "x", "--task", TASK, "--every", "5", "--timezone", "Europe/Paris"],
     "--timezone applies to --cron and --at only"),
    (["add", "x", "--task", TASK, "--cron", "0 4 * * *", "--timezone", "posix/Europe/Paris"],
     "unknown time zone 'posix/Europe/Paris'"),
    (["add", "x", "--task", TASK, "--every", "5", "--args", "[1,"], "--args is not valid JSON"),
    (["add", "x", "--task", TASK, "--every", "5", "--kwargs", "{\"a\": }"],
     "--kwargs is not valid JSON"),
    (["add", "x", "--task", TASK, "--every", "5", "--kwargs", "[1]"], "must be a JSON object"),
    (["add", "x", "--task", TASK, "--every", "0"], "--every 0 must be"),
    (["add", "x", "--task", TASK, "--every", "99999999999"],
     "--every 99999999999 must be a whole number of seconds from 1 to 315360000"),
    (["add", "x", "--task", TASK, "--at", "9999-12-31T23:59:59-05:00"],
     "--at '9999-12-31T23:59:59-05:00' is too far ahead; give a time before 9999-01-01"),
    (["add", "x", "--task", TASK, "--at", "9999-06-01T00:00:00Z"], "is too far ahead"),
    (["add", "x", "--task", "tasks.nope", "--every", "5"],
     "--task 'tasks.nope' is not a task this app knows"),
    (["add", "x", "--task", "tasks.delete_old_data", "--every", "60", "--kwargs", '{"nope": 1}'],
     "--args/--kwargs do not fit task tasks.delete_old_data(dry_run=False): got an "
     "unexpected keyword argument 'nope'"),
    (["add", "x", "--task", "tasks.delete_old_data", "--every", "60", "--args", "[1,2,3]"],
     "do not fit task tasks.delete_old_data(dry_run=False): too many positional arguments"),
    (["add", "x", "--task", "tasks.send_sign_in_email", "--every", "60", "--kwargs",
      '{"email": "a@example.com"}'],
     "do not fit task tasks.send_sign_in_email(email, name, code): missing a required "
     "argument: 'name'"),
    (["add", "x", "--task", TASK, "--at", "tomorrow"], "not an ISO-8601 time"),
    (["add", "x", "--task", TASK, "--at", "2001-01-01T00:00:00Z"], "is in the past"),
    (["add", "x", "--task", TASK], "give exactly one of --cron, --every or --at"),
    (["add", "x", "--task", TASK, "--every", "5", "--cron", "* * * * *"], "exactly one"),
    (["add", "tick", "--task", TASK, "--every", "5"], "an entry named 'tick' exists already"),
    (["add", "x", "--every", "5"], "Missing option '--task'"),
    (["add", "x", "--task", TASK, "--every", "abc"], "'abc' is not a valid integer"),
    (["add", "x", "--task", TASK, "--every", "5", "--catch-up", "never"], "'never' is not one of"),
    (["pause"], "Missing argument"),
    (["pause", "nope"], "no schedule entry named 'nope'"),
    (["pause", "tick", "nope"], "no schedule entry named 'nope'"),
    (["resume", "nope"], "no schedule entry named 'nope'"),
    (["remove", "tick", "nope"], "no schedule entry named 'nope'"),
    (["run", "nope"], "no schedule entry named 'nope'"),
    (["nope"], "No such command 'nope'"),
])
def test_bad_input_prints_one_line_exits_non_zero_and_writes_nothing(
        app_db: str, args: list[str], complaint: str) -> None:
    # Given a schedule with one entry
    add_tick()
    before = snapshot(app_db)

    # When a command is given bad input
    result = invoke(*args)

    # Then it says what is wrong in one line, fails, and the tables are untouched
    assert result.exit_code != 0
    assert complaint in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert snapshot(app_db) == before


def test_missing_database_url_is_one_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path) -> None:
    from config.settings import get_settings

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    get_settings.cache_clear()
    try:
        result = invoke("list")
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: DATABASE_URL is not set: set it to postgresql://user:pass@host:port/db, "
        "or run `pgjobs dev` for an embedded database"]


def test_list_shows_the_default_entry_at_four(app_db: str) -> None:
    # Given the default entries synced (as `pgjobs migrate` and beat do)
    sync_default_entries(app_db)
    # When listing
    result = invoke("list")
    # Then delete_old_data shows its task, its 04:00 crontab and a next run at 04:00
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()[:2]
    assert header.split() == ["NAME", "TASK", "SCHEDULE", "ENABLED", "LAST", "RUN", "NEXT", "RUN"]
    assert line.split()[:8] == ["delete_old_data", "tasks.delete_old_data", "0", "4", "*", "*",
                                "*", "UTC"]
    assert line.split()[8:10] == ["yes", "never"]
    assert "T04:00" in line.split()[10]


def test_sync_default_entries_inserts_only_what_is_missing(app_db: str) -> None:
    # Given the defaults synced, then paused and moved to 05:30 by an operator
    sync_default_entries(app_db)
    assert invoke("pause", "delete_old_data").exit_code == 0
    rows(app_db, "UPDATE celery_crontabschedule SET hour = '5', minute = '30'")

    # When they are synced again
    sync_default_entries(app_db)

    # Then the operator's changes stand and nothing was duplicated
    assert rows(app_db, "SELECT t.enabled, c.hour, c.minute FROM celery_periodictask t JOIN "
                "celery_crontabschedule c ON c.id = t.schedule_id") == [(False, "5", "30")]

    # ... and a removed default comes back
    assert invoke("remove", "delete_old_data").exit_code == 0
    sync_default_entries(app_db)
    assert rows(app_db, "SELECT name, enabled FROM celery_periodictask") == [
        ("delete_old_data", True)]


def test_add_stores_every_field(app_db: str) -> None:
    result = invoke("add", "paris", "--task", "reports.daily", "--force", "--cron", "30 2 * * 1-5",
                    "--timezone", "Europe/Paris", "--args", "[1]", "--kwargs", '{"a": "b"}',
                    "--queue", "reports", "--catch-up", "skip")
    assert result.exit_code == 0, result.output
    assert rows(app_db, "SELECT t.task, t.args, t.kwargs, t.queue, t.enabled, p.catch_up, "
                "c.minute, c.hour, c.day_of_week, c.timezone FROM celery_periodictask t "
                "JOIN pgjobs_beat_policy p ON p.periodic_task_id = t.id "
                "JOIN celery_crontabschedule c ON c.id = t.schedule_id") == [
        ("reports.daily", "[1]", '{"a": "b"}', "reports", True, "skip", "30", "2", "1-5",
         "Europe/Paris")]
    assert "30 2 * * 1-5 Europe/Paris (catch-up skip)" in invoke("list").output


def test_a_task_the_app_defines_is_accepted_and_force_accepts_any_other(app_db: str) -> None:
    # Given the app's own task, and one it does not define (a typo, or a task of another app)
    # When both are added, the unknown one with --force
    known = invoke("add", "cleanup", "--task", "tasks.delete_old_data", "--every", "60")
    forced = invoke("add", "elsewhere", "--task", "tasks.nope", "--every", "60", "--force")

    # Then both are stored
    assert (known.exit_code, forced.exit_code) == (0, 0), known.output + forced.output
    assert rows(app_db, "SELECT name, task FROM celery_periodictask WHERE name <> "
                "'delete_old_data' ORDER BY name") == [
        ("cleanup", "tasks.delete_old_data"), ("elsewhere", "tasks.nope")]


def test_arguments_the_task_takes_are_accepted_and_force_accepts_others(app_db: str) -> None:
    # Given the app's own task: When it is added with arguments it takes, and with others
    # under --force (a signature about to change, say)
    fits = invoke("add", "dry", "--task", "tasks.delete_old_data", "--every", "60",
                  "--kwargs", '{"dry_run": true}')
    forced = invoke("add", "next", "--task", "tasks.delete_old_data", "--every", "60",
                    "--kwargs", '{"batch": 5}', "--force")

    # Then both are stored as given
    assert (fits.exit_code, forced.exit_code) == (0, 0), fits.output + forced.output
    assert rows(app_db, "SELECT name, kwargs FROM celery_periodictask WHERE name IN "
                "('dry', 'next') ORDER BY name") == [
        ("dry", '{"dry_run": true}'), ("next", '{"batch": 5}')]


def test_pause_resume_remove(app_db: str) -> None:
    add_tick("one")
    add_tick("two")
    assert invoke("pause", "one", "two").exit_code == 0
    assert rows(app_db, "SELECT bool_or(enabled) FROM celery_periodictask") == [(False,)]
    assert "paused" in invoke("list").output
    assert invoke("resume", "one").exit_code == 0
    assert rows(app_db, "SELECT name FROM celery_periodictask WHERE enabled") == [("one",)]
    assert invoke("remove", "one", "two").exit_code == 0
    assert rows(app_db, "SELECT count(*) FROM celery_periodictask") == [(0,)]


def test_run_sends_once_now_through_the_broker(app_db: str) -> None:
    from config.celery import app

    add_tick("tick", "--args", "[7]")
    result = invoke("run", "tick")
    assert result.exit_code == 0, result.output
    messages = drain(app, QUEUE)
    assert [(m["task"], m["periodic_task_name"]) for m in messages] == [
        ("beat_test.record", "tick")]
    assert messages[0]["id"] in result.output
    # ... without touching the schedule
    assert rows(app_db, "SELECT total_run_count FROM celery_periodictask") == [(0,)]


def test_list_shows_a_one_off_resumed_after_its_time_as_not_running(app_db: str) -> None:
    # Given a one-off entry resumed only after its time had passed (resume counts from now)
    at = datetime.now(UTC) + timedelta(minutes=1)
    assert invoke("add", "later", "--task", TASK, "--at", at.isoformat()).exit_code == 0
    rows(app_db, "UPDATE celery_periodictask SET last_run_at = %(t)s WHERE name = 'later'",
         {"t": at + timedelta(seconds=1)})

    # When listing
    listed = invoke("list").output

    # Then its next run says it will not run, as the scheduler will not run it
    assert [line.split()[-1] for line in listed.splitlines() if line.startswith("later")] == [
        "done"]


def test_resuming_an_entry_that_is_not_paused_keeps_its_progress(app_db: str) -> None:
    # Given a running entry whose last run is an hour ago
    add_tick("running")
    rows(app_db, "UPDATE celery_periodictask SET last_run_at = now() - interval '1 hour' "
         "WHERE name = 'running'")
    before = rows(app_db, "SELECT last_run_at FROM celery_periodictask WHERE name = 'running'")

    # When it is resumed anyway
    assert invoke("resume", "running").exit_code == 0

    # Then its progress stands: the runs due since then are not dropped
    assert rows(app_db, "SELECT last_run_at FROM celery_periodictask "
                "WHERE name = 'running'") == before
