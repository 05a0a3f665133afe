"""The tasks' lender: what the result backend and the broker's publishing borrow in a pool
child."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from task_helpers import free_port

from tasks.db import lend


def test_a_lent_connection_has_no_transaction_open_and_returns_to_the_pool(app_db: str) -> None:
    # given a connection lent and used in a transaction of its borrower's
    with lend() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        with conn.transaction():
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    # when the next operation borrows, it gets the same connection back, still idle
    with lend() as again:
        assert again.info.transaction_status == TransactionStatus.IDLE
        assert again.execute("SELECT pg_backend_pid()").fetchone() == backend
        again.rollback()


def test_a_statement_on_a_lent_connection_commits_by_itself_in_one_round_trip(
        app_db: str) -> None:
    # given a connection lent for one statement (a stored result, a publish)
    with lend() as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        # then it ran in a transaction of its own, with no BEGIN and COMMIT around it
        assert conn.autocommit
        assert conn.info.transaction_status == TransactionStatus.IDLE
    # and the pool gets it back as SQLAlchemy hands it out, out of autocommit
    from tasks.db import engine

    with engine().connect() as sa_conn:
        driver = sa_conn.connection.driver_connection
        assert not driver.autocommit
        assert driver.execute("SELECT pg_backend_pid()").fetchone() == backend
        sa_conn.rollback()


def test_a_lender_that_cannot_reach_the_database_raises_the_drivers_error(
        settings_env: Callable[..., None]) -> None:
    # given a DATABASE_URL where nothing listens
    settings_env(DATABASE_URL=f"postgresql://app@127.0.0.1:{free_port()}/app")
    # when a connection is asked for, the error is psycopg's, which kombu retries on
    with pytest.raises(psycopg.OperationalError), lend():
        pass


def _terminate(app_db: str, backend: int) -> None:
    with psycopg.connect(app_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))


def test_a_tasks_checkout_replaces_a_pooled_connection_the_server_ended(app_db: str) -> None:
    from tasks.db import engine

    # given a pooled connection whose server session was ended (a restart, a failover)
    with engine().connect() as sa_conn:
        (backend,) = sa_conn.exec_driver_sql("SELECT pg_backend_pid()").one()
        sa_conn.rollback()
    _terminate(app_db, backend)
    # when a task checks a connection out, the ping replaces the dead one
    with engine().connect() as sa_conn:
        (again,) = sa_conn.exec_driver_sql("SELECT pg_backend_pid()").one()
        sa_conn.rollback()
    assert again != backend


def test_a_loan_of_a_connection_the_server_ended_fails_once_and_the_next_gets_a_new_one(
        app_db: str) -> None:
    # given a pooled connection whose server session was ended
    with lend() as conn:
        (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    _terminate(app_db, backend)
    # when it is lent, unpinged, its borrower's statement fails with the driver's error
    with pytest.raises(psycopg.OperationalError), lend() as conn:
        conn.execute("SELECT 1")
    # and the pool dropped it: the next loan (the borrower's retry) works
    with lend() as conn:
        (again,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert again != backend
