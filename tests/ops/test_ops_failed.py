"""``pgjobs failed list|retry``: failed tasks from the result backend."""

from __future__ import annotations

import json

import pytest
from ops_helpers import one_line_error

from tests.polling import wait_until

BAD_RULE = [{"table": "no_such_table", "column": "created_at", "max_age_days": 1}]
DRY_RUN = {"dry_run": True}
SEED = (
    "INSERT INTO celery_taskmeta (task_id, name, status, date_done, traceback, args, kwargs,"
    " queue) VALUES"
    " ('new', 'tasks.a', 'FAILURE', (now() AT TIME ZONE 'UTC') - interval '1 minute',"
    "  E'Traceback...\\nValueError: boom\\n', '[1, 2]', '{\"x\": 1}', 'mail'),"
    " ('old', 'tasks.b', 'FAILURE', (now() AT TIME ZONE 'UTC') - interval '3 days',"
    "  E'Traceback...\\nKeyError: k', NULL, NULL, 'mail'),"
    " ('fine', 'tasks.a', 'SUCCESS', now() AT TIME ZONE 'UTC', NULL, '[]', '{}', 'mail')"
)


def failures(sql) -> list[tuple]:
    return sql("SELECT task_id, encode(kwargs, 'escape') FROM celery_taskmeta"
               " WHERE status = 'FAILURE' ORDER BY id")


def listed(cli, *args: str) -> list[dict]:
    result = cli("failed", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.acceptance
def test_a_failed_task_is_listed_and_retried_with_its_arguments(cli, processes, sql):
    from tasks import delete_old_data

    # Given a task that failed on a real worker: a clean-up rule names a missing table
    # (send_sign_in_email would not do: its arguments are private, never stored)
    processes.env["RETENTION_TABLES"] = json.dumps(BAD_RULE)
    processes.worker("fails")
    first = delete_old_data.apply_async(kwargs=DRY_RUN).id
    wait_until(lambda: failures(sql), 30, "the task to fail", processes.logs)

    # When the failures are listed, Then it is there with its error
    [row] = listed(cli)
    assert (row["task_id"], row["task"]) == (first, "tasks.delete_old_data")
    assert "no_such_table" in row["error"]

    # When it is retried
    result = cli("failed", "retry", first)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "retried 1 failed task"

    # Then the worker ran it again, as a new task with the same arguments, exactly once
    wait_until(lambda: failures(sql) and failures(sql)[0][0] != first, 30,
               "the retry to run", processes.logs)
    [(second, kwargs)] = failures(sql)
    assert second != first and json.loads(kwargs) == DRY_RUN


def test_list_filters_by_task_and_time(cli, sql):
    sql(SEED)
    assert [r["task_id"] for r in listed(cli)] == ["new", "old"]
    assert [r["task_id"] for r in listed(cli, "--task", "tasks.b")] == ["old"]
    assert [r["task_id"] for r in listed(cli, "--since", "1d")] == ["new"]
    assert [r["task_id"] for r in listed(cli, "--since", "2000-01-01T00:00:00+00:00")] == [
        "new", "old"]
    [row] = listed(cli, "--since", "1h")
    assert row == {"task_id": "new", "task": "tasks.a", "date_done": row["date_done"],
                   "error": "ValueError: boom", "queue": "mail", "retries": None,
                   "worker": None}
    assert row["date_done"].endswith("+00:00")
    assert cli("failed", "list", "--task", "tasks.none").stdout.strip() == "no failed tasks"


def test_retry_all_sends_each_once_and_skips_those_without_arguments(cli, sql):
    # Given one failure with stored arguments and one without
    sql(SEED)

    # When all are retried, twice
    first = cli("failed", "retry", "--all")
    again = cli("failed", "retry", "--all")

    # Then one message was sent, with the stored arguments, and the second run sent none
    assert first.stdout.strip() == "retried 1 failed task; 1 without stored arguments skipped"
    assert again.stdout.strip() == "retried 0 failed tasks; 1 without stored arguments skipped"
    [(payload,)] = sql("SELECT payload FROM pgjobs_broker_message WHERE queue = 'mail'")
    headers = json.loads(payload)["headers"]
    assert headers["task"] == "tasks.a" and headers["argsrepr"] == "[1, 2]"
    assert [r["task_id"] for r in listed(cli)] == ["old"]


@pytest.mark.parametrize(("args", "complaint"), [
    (["retry"], "give failed task ids, or --all"),
    (["retry", "x", "--all"], "give failed task ids, or --all"),
    (["retry", "nope"], "no failed task nope; nothing was sent"),
    (["retry", "new", "old"], "failed task old has no stored arguments"),
    (["retry", "fine"], "no failed task fine"),
    (["list", "--since", "yesterday"], "--since 'yesterday' is neither a duration"),
    (["list", "--limit", "-1"], "--limit"),
    (["list", "--limit", "99999999999999999999"],
     "'--limit': 99999999999999999999 is not in the range 1<=x<=100000"),
    (["list", "--since", "99999999d"], "--since '99999999d' falls outside the years 1 to 9999"),
    (["list", "--since", "99999999999999999999m"], "falls outside the years 1 to 9999"),
    (["list", "--since", "9999-12-31T23:59:59-05:00"], "falls outside the years 1 to 9999"),
])
def test_bad_input_is_one_line_and_sends_nothing(cli, sql, args, complaint):
    sql(SEED)
    assert complaint in one_line_error(cli("failed", *args))
    assert sql("SELECT count(*) FROM pgjobs_broker_message") == [(0,)]
    assert len(failures(sql)) == 2
