"""Acks inside Celery's event loop: a backlog's acks ride with its claims, in one round trip,
and acks with no claim coming go on their own within ``ACK_HOLD``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from broker_helpers import Connect, backlog, drain_in_loop, sql, turn_until
from kombu import Consumer
from kombu.message import Message

from broker import channel as channel_module

QUEUED = "SELECT count(*) FROM pgjobs_broker_message"


def test_the_acks_of_a_backlog_ride_with_its_claims(
        db_url: str, connect: Connect, looped, acks_alone: list[int]) -> None:
    # Given 12 messages queued, and a consumer in the event loop with a window of 4
    queue = backlog(connect, "backlog", 12)

    # When it drains them, acking each as it runs
    runs = drain_in_loop(db_url, *looped(), queue)

    # Then each ran once, and no ack needed a round trip of its own: each went with a claim
    assert runs == {n: 1 for n in range(12)}
    assert acks_alone == []


def test_an_ack_with_no_claim_coming_goes_on_its_own_within_the_hold(
        db_url: str, connect: Connect, looped, acks_alone: list[int]) -> None:
    # Given a consumer in the event loop with a window of 4 holding a full window of a backlog
    queue = backlog(connect, "held", 6)
    conn, hub = looped()
    received: list[Message] = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: received.append(message)],
                  prefetch_count=4):
        turn_until(hub, lambda: len(received) == 4, "a full window")

        # When one message is acked and the others keep running (the window stays more than
        # half full: no claim comes)
        received[0].ack()
        acked_at = time.monotonic()

        # Then the loop's timer is set for the hold's end, and the ack then goes on its own
        assert conn.transport.next_action_at() <= acked_at + channel_module.ACK_HOLD
        turn_until(hub, lambda: acks_alone == [1], "the held ack")
        assert sql(db_url, QUEUED) == [(5,)]
        assert len(received) == 4


def test_acks_from_pool_threads_never_join_a_claim_in_flight(
        db_url: str, connect: Connect, looped) -> None:
    # Given 300 messages queued, and a consumer in the event loop whose messages are run and
    # acked on two other threads, as a threads pool runs and acks them
    queue = backlog(connect, "threads", 300)
    conn, hub = looped()
    runs: dict[int, int] = {}
    pool = ThreadPoolExecutor(2)

    def run(body: dict[str, int], message: Message) -> None:
        runs[body["n"]] = runs.get(body["n"], 0) + 1
        pool.submit(message.ack)

    # When it drains them, its loop claiming while those threads ack on the same session
    with Consumer(conn, [queue], callbacks=[run], prefetch_count=4):
        turn_until(hub, lambda: sql(db_url, QUEUED) == [(0,)], "the backlog to be acked", 60)
    pool.shutdown()

    # Then every ack was recorded (none went into a claim's transaction and was lost with
    # it, none wedged the session), and each message ran once
    assert runs == {n: 1 for n in range(300)}
