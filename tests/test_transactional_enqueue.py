"""A sign-in email queued in the transaction that creates its code shares its fate."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker import in_transaction
from config.urls import sqlalchemy_url


def queued_sign_in_emails(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pgjobs_broker_message WHERE queue = 'celery' "
            "AND payload LIKE '%tasks.send_sign_in_email%'").fetchone()[0]


def create_code_and_queue_email(db_url: str, commit: bool) -> None:
    from tasks import send_sign_in_email

    engine = sa.create_engine(sqlalchemy_url(db_url), poolclass=sa.NullPool)
    with Session(engine) as session, in_transaction(session):
        session.execute(sa.text("INSERT INTO sign_in_code (email, code) VALUES (:e, :c)"),
                        {"e": "ada@example.com", "c": "424242"})
        send_sign_in_email.apply_async(
            kwargs={"email": "ada@example.com", "name": "Ada", "code": "424242"})
        session.commit() if commit else session.rollback()


@pytest.fixture
def sign_in_codes(app_db: str) -> str:
    with psycopg.connect(app_db) as conn:
        conn.execute("CREATE TABLE sign_in_code (email text, code text)")
    return app_db


@pytest.mark.parametrize(("commit", "expected"), [(True, 1), (False, 0)])
def test_email_is_queued_only_if_the_code_commits(sign_in_codes: str, commit, expected):
    # given the application's own transaction creating a sign-in code
    # when it queues the email inside that transaction, then commits or rolls back
    create_code_and_queue_email(sign_in_codes, commit)

    # then the code and the queued email exist together, or neither does
    with psycopg.connect(sign_in_codes) as conn:
        codes = conn.execute("SELECT count(*) FROM sign_in_code").fetchone()[0]
    assert (codes, queued_sign_in_emails(sign_in_codes)) == (expected, expected)
