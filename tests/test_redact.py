"""One redactor (``broker.urls.redact``) masks a password wherever libpq can take one, and
every start-up error uses it; the broker's password is kept where Celery never shows it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict

from broker.urls import redact, split_password, with_password


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.example:5432/jobs", "postgresql://app:**@db.example:5432/jobs"),
    ("postgresql://app@db.example/jobs?password=s3cret",
     "postgresql://app@db.example/jobs?password=**"),
    ("postgresql://app@h/jobs?sslmode=require&password=s3cret&application_name=w",
     "postgresql://app@h/jobs?sslmode=require&password=**&application_name=w"),
    ("postgresql://h/jobs?sslpassword=s3cret", "postgresql://h/jobs?sslpassword=**"),
    ("postgresql://app:s3%20cr%40et@h/jobs", "postgresql://app:**@h/jobs"),
    ("postgresql://app@h/jobs?password=s3%20cret", "postgresql://app@h/jobs?password=**"),
    ("postgresql://app:s3cret@[::1/jobs", "postgresql://app:**@[::1/jobs"),
    ("postgresql://app:s3cret@h:notaport/jobs", "postgresql://app:**@h:notaport/jobs"),
    ("postgresql://app:s3/c?r#e@t@h/jobs", "postgresql://app:**@h/jobs"),
    ("host=h user=app password=s3cret dbname=jobs", "host=h user=app password=** dbname=jobs"),
    ("host=h password = 's3 c\\'ret' dbname=jobs", "host=h password=** dbname=jobs"),
    ("postgresql:/app:s3cret@h/jobs", "postgresql:**@h/jobs"),
])
def test_every_form_of_password_is_masked(url: str, shown: str) -> None:
    assert redact(url) == shown
    for fragment in ("s3", "cret", "c\\'ret"):
        assert fragment not in redact(url)


@pytest.mark.parametrize("url", [
    "postgresql://app@db.example:5432/jobs",
    "postgresql://db.example:5432/jobs?sslmode=require",
    "postgresql://postgres:@/postgres?host=/tmp/pg",
    "host=h user=app dbname=jobs",
])
def test_a_url_without_a_password_is_shown_as_is(url: str) -> None:
    assert redact(url) == url


def test_the_mask_can_be_chosen() -> None:
    assert redact("postgresql://app:s3cret@h/jobs?password=x", "***") == \
        "postgresql://app:***@h/jobs?password=***"


@pytest.mark.parametrize("url", [
    "postgresql://u@127.0.0.1:1/db?password=hunter2",  # unreachable: the connection error
    "postgresql://u@h:notaport/db?password=hunter2",  # malformed: the settings error
    "postgresql://u:hunter2@127.0.0.1:1/db?sslpassword=hunter2",
])
@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "celery", "-A", "config", "worker"],
    [sys.executable, "-c", "from config.cli import main; main()", "migrate"],
])
def test_start_up_errors_never_show_a_password(url: str, command: list[str], tmp_path) -> None:
    # Given a password in the user part or as a URL parameter
    # When start-up fails on that URL
    result = subprocess.run(command, env={"DATABASE_URL": url, "PATH": ""}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    # Then the one-line error names the URL with its password masked
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr
    assert "DATABASE_URL" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("url", "without", "password"), [
    ("postgresql://app:s3cret@db.example:5432/jobs", "postgresql://app@db.example:5432/jobs",
     "s3cret"),
    ("postgresql://app:s3%20cr%40et@h/jobs", "postgresql://app@h/jobs", "s3 cr@et"),
    ("postgresql://app@h/jobs?password=s3cret", "postgresql://app@h/jobs", "s3cret"),
    ("postgresql://app@h/jobs?sslmode=require&password=s3cret&application_name=w",
     "postgresql://app@h/jobs?sslmode=require&application_name=w", "s3cret"),
    ("postgresql://app@h/jobs?sslmode=require&password=s3cret",
     "postgresql://app@h/jobs?sslmode=require", "s3cret"),
    ("postgresql://app@h/jobs", "postgresql://app@h/jobs", None),
    ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg",
     None),
])
def test_the_password_is_taken_out_of_a_url_and_put_back(url, without, password) -> None:
    assert split_password(url) == (without, password)
    assert conninfo_to_dict(with_password(without, password)) == conninfo_to_dict(url)


def test_celery_shows_the_broker_without_its_password_and_the_broker_connects_with_it() -> None:
    from celery import Celery

    from config.celeryconfig import celery_config
    from config.settings import load_settings

    # Given the pgjobs configuration of a database URL with a password
    app = Celery("redacted", set_as_current=False)
    app.conf.update(celery_config(load_settings(
        database_url="postgresql://app:s3cret@127.0.0.1:1/jobs")))
    connection = app.connection_for_write()

    # Then Celery's settings, and the connection's info (`inspect stats`), do not show it
    assert "s3cret" not in repr(app.conf.table(censored=True))
    assert connection.info()["hostname"] == "postgresql://app@127.0.0.1:1/jobs"
    # And the transport, and a clone of it (a pooled connection), connect with it
    assert conninfo_to_dict(connection.transport.conninfo)["password"] == "s3cret"
    assert conninfo_to_dict(connection.clone().transport.conninfo)["password"] == "s3cret"
