"""``pgjobs status``: queue depths by state, live workers, the beat leader, the next runs."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from ops_helpers import one_line_error

from beat.leadership import LOCK_KEYS
from beat.schedule import sync_default_entries

SEED = """
INSERT INTO pgjobs_broker_queue (name) VALUES ('idle');
INSERT INTO pgjobs_broker_consumer (id, hostname, pid, expires_at) VALUES
  (%(live)s, 'host-a', 101, now() + interval '50 seconds'),
  (%(gone)s, 'host-b', 102, now() - interval '1 second'),
  (%(client)s, 'host-c', 103, now() + interval '50 seconds');
INSERT INTO pgjobs_broker_queue (name, auto_delete) VALUES
  ('w1@host-a.celery.pidbox', true), ('w2@host-b.celery.pidbox', true),
  ('f00d.reply.celery.pidbox', true), ('celeryev.f00d', true);
INSERT INTO pgjobs_broker_subscription (queue, consumer) VALUES
  ('w1@host-a.celery.pidbox', %(live)s),
  ('w2@host-b.celery.pidbox', %(gone)s),
  ('f00d.reply.celery.pidbox', %(client)s),
  ('celeryev.f00d', %(client)s);
INSERT INTO pgjobs_broker_message (queue, visible_at, payload)
  SELECT 'mail', now() - interval '30 seconds', '{}' FROM generate_series(1, 3);
INSERT INTO pgjobs_broker_message (queue, visible_at, delayed, payload)
  SELECT 'mail', now() + interval '1 hour', true, '{}' FROM generate_series(1, 2);
INSERT INTO pgjobs_broker_message (queue, consumer, payload) VALUES ('mail', %(live)s, '{}');
INSERT INTO pgjobs_broker_message (queue, payload) VALUES ('w1@host-a.celery.pidbox', '{}');
INSERT INTO pgjobs_broker_dead_letter (id, queue, priority, deliveries, payload, reason,
                                       created_at)
  VALUES (1, 'reports', 0, 1, '{}', 'rejected', now());
"""


@pytest.fixture
def seeded(sql):
    ids = {"live": uuid.uuid4(), "gone": uuid.uuid4(), "client": uuid.uuid4()}
    for statement in filter(str.strip, SEED.split(";")):
        sql(statement, ids)


def status_json(cli) -> dict:
    result = cli("status", "--json", env={"VISIBILITY_TIMEOUT": "60"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_counts_each_queue_by_state(cli, seeded):
    # When status is asked for as JSON
    status = status_json(cli)

    # Then every durable or non-empty queue is counted by state; transient queues are not
    assert set(status) == {"queues", "workers", "beat", "schedule"}
    queues = {queue.pop("name"): queue for queue in status["queues"]}
    assert set(queues) == {"idle", "mail", "reports"}
    mail = queues["mail"]
    assert (mail["ready"], mail["scheduled"], mail["in_flight"], mail["dead"]) == (3, 2, 1, 0)
    assert 30 <= mail["oldest_ready_age_s"] < 3600
    assert queues["reports"] == {"ready": 0, "scheduled": 0, "in_flight": 0, "dead": 1,
                                 "oldest_ready_age_s": None}
    assert queues["idle"]["ready"] == 0 and queues["idle"]["oldest_ready_age_s"] is None


def test_json_lists_live_workers_only(cli, seeded):
    # When status is asked for, Then only the worker whose lease runs is listed (not the
    # lapsed one, not a client), with the age of its last heartbeat (a heartbeat sets the
    # lease 60 s ahead)
    [worker] = status_json(cli)["workers"]
    assert set(worker) == {"name", "hostname", "pid", "started_at", "heartbeat_age_s"}
    assert (worker["name"], worker["hostname"], worker["pid"]) == ("w1@host-a", "host-a", 101)
    assert 10 <= worker["heartbeat_age_s"] < 60


def test_beat_leader_last_dispatch_and_next_runs(cli, sql, app_db):
    # Given the default schedule, a beat holding the leader lock, and one sent tick
    sync_default_entries(app_db)
    sql("INSERT INTO pgjobs_beat_tick (entry_name, due_at, task_id, leader, sent_at)"
        " VALUES ('delete_old_data', now(), 't1', 'x', now())")
    with psycopg.connect(app_db, autocommit=True,
                         application_name="pgjobs-beat:test-host:42") as leader:
        leader.execute("SELECT pg_advisory_lock(%(key1)s, %(key2)s)", LOCK_KEYS)

        # When status is asked for
        status = status_json(cli)
        text = cli("status").stdout

    # Then it names the leader, its last dispatch and the next run of the schedule
    beat = status["beat"]
    assert beat["leader"] == "pgjobs-beat:test-host:42"
    assert beat["last_dispatch"]["entry"] == "delete_old_data"
    assert beat["last_pass_age_s"] >= 0
    assert [(run["name"], run["task"]) for run in status["schedule"]] == [
        ("delete_old_data", "tasks.delete_old_data")]
    assert "beat: pgjobs-beat:test-host:42 leads" in text
    assert "delete_old_data  tasks.delete_old_data" in text


def test_text_shows_the_queue_table_and_no_leader(cli, seeded):
    result = cli("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "SCHEDULED", "IN", "FLIGHT", "DEAD",
                                "OLDEST", "READY"]
    assert any(line.split()[:5] == ["mail", "3", "2", "1", "0"] for line in lines)
    assert "beat: no leader" in lines
    assert "workers: 1 live" in lines
    assert any(line.startswith("  w1@host-a (pid 101), heartbeat") for line in lines)


def test_an_empty_database_says_so(cli):
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("no queues yet")
    assert status_json(cli) == {"queues": [], "workers": [], "beat": None, "schedule": []}


def test_unreachable_database_is_one_line_and_exit_1(cli):
    result = cli("status", env={"DATABASE_URL": "postgresql://u:secret@127.0.0.1:1/db"})
    line = one_line_error(result)
    assert result.exit_code == 1
    assert "cannot connect to postgresql://u:**@127.0.0.1:1/db" in line
    assert "secret" not in line


@pytest.mark.parametrize(("args", "complaint"), [
    (["--watch", "0"], "'--watch'"),
    (["--watch", "soon"], "'soon' is not a valid float"),
    (["--watch", "nan"], "'--watch': nan is not in the range 0.5<=x<=86400"),
    (["--watch", "inf"], "'--watch': inf is not in the range 0.5<=x<=86400"),
    (["--jsn"], "No such option"),
])
def test_bad_input_is_one_line(cli, args, complaint):
    result = cli("status", *args)
    assert complaint in one_line_error(result)


def test_watch_repeats_until_interrupted(app_db, seeded):
    import signal
    import subprocess

    from processes import BIN, process_env

    # Given status watching every half second, as JSON lines
    process = subprocess.Popen([str(BIN / "pgjobs"), "status", "--json", "--watch", "0.5"],
                               env=process_env(app_db), stdout=subprocess.PIPE, text=True)
    try:
        # When two snapshots came out
        first, second = process.stdout.readline(), process.stdout.readline()
    finally:
        process.send_signal(signal.SIGINT)

    # Then each is a whole status object, and Ctrl-C ends the watch cleanly
    assert json.loads(first).keys() == json.loads(second).keys() == {
        "queues", "workers", "beat", "schedule"}
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("command", [("status",), ("dead", "list")])
def test_with_the_broker_on_rabbitmq_the_broker_commands_say_where_to_look(cli, command):
    result = cli(*command, env={"BROKER_URL": "amqp://guest:secret@rabbit:5672//"})
    assert result.exit_code == 1
    assert one_line_error(result) == (
        "Error: BROKER_URL points at RabbitMQ, so the queues are RabbitMQ's: see them with "
        "`rabbitmqctl list_queues` or its management UI, and the workers with "
        "`celery -A config inspect`")
    assert "secret" not in result.output

