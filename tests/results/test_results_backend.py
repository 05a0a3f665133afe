"""The backend without workers: selection, notifications, chord counting, privacy, fork."""

from __future__ import annotations

import os
import signal
import threading

import psycopg
import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from broker.results import PostgresBackend, PrivateArgsTask
from broker.results.connection import LISTEN_APPLICATION_NAME, query
from broker.results.waiting import EVERYTHING, Listen
from tests.polling import wait_until


def _app(url: str, **conf: object) -> Celery:
    app = Celery("backend-test", set_as_current=False)
    app.conf.update(result_backend="broker.results:PostgresBackend+" + url,
                    result_extended=True, accept_content=["json"], **conf)
    return app


class _Request:
    """What the worker hands the backend about a task run."""

    def __init__(self, task: str, args: list, kwargs: dict) -> None:
        self.id, self.task, self.args, self.kwargs = f"id-{task}", task, args, kwargs
        self.hostname, self.retries, self.delivery_info = "w@host", 0, {"routing_key": "q"}
        self.group = self.parent_id = self.chord = self.stamps = None
        self.ignore_result = False
        self.children: list = []


def _send_code(email: str, code: str) -> None:
    """A task body; the tests only store results for it."""


def test_pgjobs_uses_this_backend_by_default(app_db):
    from config.celery import app

    assert isinstance(app.backend, PostgresBackend)


def test_any_celery_app_selects_it_by_result_backend_and_no_password_is_shown(db_url):
    backend = _app(db_url.replace("postgres@", "postgres:secret@") + "?password=secret").backend

    assert isinstance(backend, PostgresBackend)
    assert "secret" not in backend.as_uri()


@pytest.mark.parametrize("value", ["soon", 0, -1])
def test_a_bad_poll_interval_is_named(db_url, value):
    app = _app(db_url, result_backend_transport_options={"poll_interval": value})
    with pytest.raises(ImproperlyConfigured, match="poll_interval must be a positive number"):
        app.backend  # noqa: B018


def test_a_ready_result_notifies_only_while_a_results_waiter_listens(db_url):
    backend = _app(db_url).backend
    with psycopg.connect(db_url, autocommit=True, application_name="observer") as observer:
        observer.execute("LISTEN pgjobs_results")

        # given nobody waits for results: storing one sends no notification
        backend.store_result("unheard", 1, "SUCCESS")
        assert list(observer.notifies(timeout=0.5)) == []

        # when a process waits (its LISTEN connection is open)
        backend.result_consumer.consume_from("heard")
        try:
            backend.store_result("heard", 2, "SUCCESS")
            # then the ready result is announced, by task id
            assert [n.payload for n in observer.notifies(timeout=5, stop_after=1)] == ["heard"]
        finally:
            backend.result_consumer.stop()


def test_a_waiter_that_starts_listening_while_an_unannounced_result_commits_reads_it(db_url):
    backend = _app(db_url).backend
    row = backend._row("raced", 3, "SUCCESS", None, None)
    with psycopg.connect(db_url) as storing:
        # given a store that found nobody waiting (so it notifies nobody) and has not committed
        notified = storing.execute(query("store_result"), row).fetchone()[1]
        assert notified == 0

        # when a process starts waiting meanwhile
        listen = Listen(db_url)
        woke: list = []
        waiter = threading.Thread(target=lambda: woke.append(listen.wait(5)), daemon=True)
        waiter.start()
        wait_until(lambda: _waits_for_a_lock(db_url), 10, "the waiter to wait for the store")

        # then its LISTEN connection opens only once the store committed, and it reads the rows
        assert waiter.is_alive() and not woke
        storing.commit()
    waiter.join(10)
    try:
        assert woke == [EVERYTHING]
        assert [m["result"] for m in backend.ready_metas(["raced"])] == [3]
    finally:
        listen.close()


def _waits_for_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND wait_event = 'advisory'",
            (LISTEN_APPLICATION_NAME,)).fetchone()[0])


@pytest.mark.parametrize("prepared", [True, False])
def test_the_backend_prepares_its_statements_only_when_asked_for(db_url, prepared):
    # Given a backend with or without the option, which stored a dozen results
    app = _app(db_url, result_backend_transport_options={"prepared_statements": prepared})
    for number in range(12):
        app.backend.store_result(f"prepared-{number}", number, "SUCCESS")

    # Then they are all there, and its session holds prepared statements only if asked to
    metas = app.backend.ready_metas([f"prepared-{number}" for number in range(12)])
    assert sorted(meta["result"] for meta in metas) == list(range(12))
    with app.backend.database.transaction() as conn:
        held = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    assert (held > 0) is prepared, held


def test_a_prepared_statements_option_that_is_not_a_bool_is_named(db_url):
    app = _app(db_url, result_backend_transport_options={"prepared_statements": "yes"})
    with pytest.raises(ImproperlyConfigured, match="result_backend_transport_options "
                                                    "prepared_statements must be true or false"):
        app.backend  # noqa: B018


def test_two_last_parts_finishing_together_fire_the_chord_once(db_url):
    # given a chord of two parts, and one transaction per part, as two workers would have
    with psycopg.connect(db_url, autocommit=True) as setup:
        setup.execute(query("chord_set_size"), {"group_id": "g", "size": 2})
    first = psycopg.connect(db_url)
    second = psycopg.connect(db_url)
    fired: list[bool] = []

    def finish(conn: psycopg.Connection, part: str) -> None:
        (already,) = conn.execute(query("chord_lock"), {"group_id": "g"}).fetchone()
        row = conn.execute(query("chord_count_part"), {
            "group_id": "g", "part_key": part, "group_index": int(part),
            "state": "SUCCESS", "result": b"1"}).fetchone()
        fired.append(bool(not already and row and row[0]))

    try:
        # when the first part has counted but not committed, and the second one arrives
        finish(first, "0")
        racer = threading.Thread(target=finish, args=(second, "1"))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second part did not wait for the first to commit"
        first.commit()
        racer.join(10)
        second.commit()
    finally:
        first.close()
        second.close()

    # then exactly one of them completed the chord
    assert sorted(fired) == [False, True]


def test_a_part_counted_twice_fires_nothing_more(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(query("chord_set_size"), {"group_id": "g", "size": 2})
        params = {"group_id": "g", "part_key": "a:0", "group_index": 0, "state": "SUCCESS",
                  "result": b"1"}
        first = conn.execute(query("chord_count_part"), params).fetchall()
        again = conn.execute(query("chord_count_part"), params).fetchall()
        (done,) = conn.execute("SELECT done FROM pgjobs_chord WHERE group_id = 'g'").fetchone()
    assert (first, again, done) == ([(False,)], [], 1)


def test_extended_results_leave_out_the_arguments_of_private_tasks(db_url):
    app = _app(db_url)
    app.task(name="ordinary", shared=False)(_send_code)
    app.task(name="private", shared=False, base=PrivateArgsTask)(_send_code)
    backend = app.backend

    # when both kinds of task store a result with result_extended
    for name in ("ordinary", "private"):
        backend.store_result(f"id-{name}", "ok", "SUCCESS",
                             request=_Request(name, ["a@example.com"], {"code": "123456"}))

    # then only the ordinary one has its arguments in the table
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT task_id, kwargs FROM celery_taskmeta").fetchall())
    assert b"123456" in bytes(rows["id-ordinary"])
    assert rows["id-private"] is None


def test_a_forked_child_stores_through_its_own_connection(db_url):
    backend = _app(db_url).backend
    backend.store_result("parent-before", 1, "SUCCESS")
    parent_pid = backend.database.connect().info.backend_pid

    # when a forked child stores a result
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            backend.store_result("child", 2, "SUCCESS")
            child_pid = backend.database.connect().info.backend_pid
            os._exit(0 if child_pid != parent_pid else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(child, 0)

    # then it used a connection of its own, and the parent's still works
    assert os.waitstatus_to_exitcode(status) == 0
    backend.store_result("parent-after", 3, "SUCCESS")
    assert backend.database.connect().info.backend_pid == parent_pid
    assert backend.get_task_meta("child")["result"] == 2


def test_a_child_forked_while_another_thread_uses_the_connection_can_store(db_url):
    # Given a backend whose connection another thread of this process is using
    backend = _app(db_url).backend
    in_use, done = threading.Event(), threading.Event()

    def hold() -> None:
        with backend.database.transaction():
            in_use.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert in_use.wait(10)

    # When this process forks meanwhile, and the child stores a result
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a child that waits is killed
        signal.alarm(20)
        try:
            backend.store_result("forked", 1, "SUCCESS")
            os._exit(0)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(child, 0)
    done.set()
    holder.join(10)

    # Then the child did not wait for a lock that only the parent's thread could release
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get_task_meta("forked")["result"] == 1


def test_results_skip_the_wal_flush_wait_only_when_a_later_ack_on_this_server_flushes_them(
        db_url):
    def commit_mode(broker_url: str, acks_late: bool, state: str = "SUCCESS") -> str | None:
        app = _app(db_url, broker_url=broker_url, broker_transport="broker.transport:Transport",
                   task_acks_late=acks_late)
        app.task(name="ordinary", shared=False)(_send_code)
        return app.backend._synchronous_commit(_Request("ordinary", [], {}), state)

    other_database = db_url.rsplit("/", 1)[0] + "/elsewhere"
    # the message is acknowledged after the result, through the same server: no wait
    assert commit_mode(db_url, acks_late=True) == "off"
    # acknowledged before the task ran, or through another database: the server's setting
    assert commit_mode(db_url, acks_late=False) is None
    assert commit_mode(other_database, acks_late=True) is None
    # an intermediate state needs no durability of its own
    assert commit_mode(db_url, acks_late=False, state="STARTED") == "off"


def test_results_ride_with_acks_where_workers_consume_not_where_they_publish(db_url):
    # Celery's workers consume and acknowledge through broker_read_url, publish through
    # broker_write_url
    def shares(**urls: str) -> tuple[bool, bool]:
        app = _app(db_url, broker_transport="broker.transport:Transport", task_acks_late=True,
                   **urls)
        app.task(name="ordinary", shared=False)(_send_code)
        backend = app.backend
        return (backend._acked_after_run(_Request("ordinary", [], {})),
                backend.broker_shares_database)

    elsewhere = db_url.rsplit("/", 1)[0] + "/elsewhere"
    assert shares(broker_url=db_url) == (True, True)
    # acks go elsewhere: a result handed to the main process would never be taken
    assert shares(broker_url=db_url, broker_read_url=elsewhere) == (False, True)
    # only publishing goes elsewhere: a chord's callback is not published with its count
    assert shares(broker_url=db_url, broker_write_url=elsewhere) == (True, False)
