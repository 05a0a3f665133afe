"""``pgjobs dead list|retry|purge`` on dead letters made by the real transport."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kombu import Connection, Consumer, Queue
from ops_helpers import one_line_error

TRANSPORT = "broker.transport:Transport"
OPTIONS = {"polling_interval": 0.2, "visibility_timeout": 2, "heartbeat_interval": 0.2}


@pytest.fixture
def conn(app_db: str) -> Iterator[Connection]:
    connection = Connection(app_db, transport=TRANSPORT, transport_options=OPTIONS)
    connection.connect()
    yield connection
    connection.release()


def consume(conn: Connection, queue: Queue, count: int, reject: bool = False) -> list[dict]:
    """Take ``count`` messages of ``queue``: ack them, or reject them without requeue."""
    bodies: list[dict] = []

    def on_message(body, message) -> None:
        bodies.append(body)
        message.reject(requeue=False) if reject else message.ack()

    deadline = time.monotonic() + 10
    with Consumer(conn, [queue], callbacks=[on_message]):
        while len(bodies) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return bodies


def dead_letters(conn: Connection, queue: Queue, count: int) -> None:
    """Publish ``count`` messages to ``queue`` and reject each: they become dead letters."""
    producer = conn.Producer()
    for n in range(count):
        # A Celery task message (protocol 2): the broker refuses other bodies under a task.
        producer.publish([[n], {}, None], routing_key=queue.name, declare=[queue],
                         headers={"task": "tasks.example", "id": f"task-{queue.name}-{n}"})
    assert len(consume(conn, queue, count, reject=True)) == count


def listed(cli, *args: str) -> list[dict]:
    result = cli("dead", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_shows_each_dead_letter(cli, conn):
    # Given two rejected messages in "mail" and one in "reports"
    dead_letters(conn, Queue("mail"), 2)
    dead_letters(conn, Queue("reports"), 1)

    # When the dead letters are listed, Then each one shows what the operator needs
    everything = listed(cli)
    assert [(d["queue"], d["task"], d["task_id"]) for d in everything] == [
        ("mail", "tasks.example", "task-mail-0"), ("mail", "tasks.example", "task-mail-1"),
        ("reports", "tasks.example", "task-reports-0")]
    assert set(everything[0]) == {"id", "queue", "task", "task_id", "reason", "deliveries",
                                  "died_at"}
    assert everything[0]["deliveries"] == 1 and "reject" in everything[0]["reason"]
    assert [d["queue"] for d in listed(cli, "--queue", "reports")] == ["reports"]
    text = cli("dead", "list").stdout.splitlines()
    assert len(text) == 3 and "tasks.example" in text[0]


def test_retry_puts_a_dead_letter_back_ready_to_run(cli, conn):
    # Given a dead letter
    queue = Queue("mail")
    dead_letters(conn, queue, 1)
    [letter] = listed(cli)

    # When it is retried
    result = cli("dead", "retry", str(letter["id"]))

    # Then it is gone from the dead letters and a consumer receives it again
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "retried 1 dead letter"
    assert listed(cli) == []
    assert consume(conn, queue, 1) == [[[0], {}, None]]


def test_retry_all_of_one_queue(cli, conn):
    dead_letters(conn, Queue("mail"), 3)
    dead_letters(conn, Queue("reports"), 1)
    result = cli("dead", "retry", "--all", "--queue", "mail")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "retried 3 dead letters"
    assert [d["queue"] for d in listed(cli)] == ["reports"]
    assert len(consume(conn, Queue("mail"), 3)) == 3


def test_purge_by_id_all_and_age(cli, conn, sql):
    # Given three dead letters, one of which died two days ago
    dead_letters(conn, Queue("mail"), 3)
    first, second, third = (d["id"] for d in listed(cli))
    sql("UPDATE pgjobs_broker_dead_letter SET died_at = now() - interval '2 days'"
        " WHERE id = %(id)s", {"id": first})

    # When purging those older than a day, then one by id, then all
    assert cli("dead", "purge", "--all", "--older-than", "1").stdout.strip() == \
        "purged 1 dead letter"
    assert cli("dead", "purge", str(second)).stdout.strip() == "purged 1 dead letter"
    assert [d["id"] for d in listed(cli)] == [third]
    assert cli("dead", "purge", "--all").stdout.strip() == "purged 1 dead letter"

    # Then none is left, and nothing reached the queue
    assert listed(cli) == []
    assert sql("SELECT count(*) FROM pgjobs_broker_message") == [(0,)]


@pytest.mark.parametrize(("args", "complaint"), [
    (["retry"], "give dead letter ids, or --all"),
    (["retry", "1", "--all"], "give dead letter ids, or --all"),
    (["purge"], "give dead letter ids, or --all"),
    (["retry", "abc"], "'abc' is not a valid integer"),
    (["purge", "--all", "--older-than", "-1"], "--older-than"),
    (["purge", "--all", "--older-than", "nan"],
     "'--older-than': nan is not in the range 0<x<=36500"),
    (["purge", "--all", "--older-than", "inf"], "'--older-than': inf is not in the range"),
    (["purge", "--all", "--older-than", "1e308"], "'--older-than': 1e+308 is not in the range"),
    (["purge", "99999999999999999999"], "99999999999999999999 is not in the range"),
    (["list", "--limit", "0"], "--limit"),
    (["list", "--limit", "99999999999999999999"],
     "'--limit': 99999999999999999999 is not in the range 1<=x<=100000"),
])
def test_bad_input_is_one_line(cli, args, complaint):
    assert complaint in one_line_error(cli("dead", *args))


def test_an_unknown_id_changes_nothing(cli, conn):
    # Given one dead letter
    dead_letters(conn, Queue("mail"), 1)
    [letter] = listed(cli)

    # When retrying it together with an id that does not exist, or of another queue
    missing = one_line_error(cli("dead", "retry", str(letter["id"]), "999999"))
    other_queue = one_line_error(cli("dead", "purge", str(letter["id"]), "--queue", "reports"))

    # Then each fails naming the id, and the dead letter is still there
    assert "no dead letter 999999" in missing and "nothing was changed" in missing
    assert f"no dead letter {letter['id']} in queue reports" in other_queue
    assert [d["id"] for d in listed(cli)] == [letter["id"]]


def test_unreachable_database_is_one_line(cli):
    result = cli("dead", "list", env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert "cannot connect" in one_line_error(result)
