"""One redactor (``broker.urls.redact``) masks a password wherever libpq can take one, and
every start-up error uses it; the broker's and the direct URL's passwords are kept where
Celery never shows them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict

from broker import urls
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


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> dict:
    """An empty password registry for this test (it is per process)."""
    kept: dict = {}
    monkeypatch.setattr(urls, "_PASSWORDS", kept)
    return kept


@pytest.mark.parametrize(("url", "found"), [
    ("postgresql://app@db:5432/jobs", "s3cret"),
    # the same server, database and role, with other parameters
    ("postgresql://app@db:5432/jobs?connect_timeout=5&application_name=w", "s3cret"),
    ("dbname=jobs host=db port=5432 user=app keepalives=1", "s3cret"),
    # another role, database, port or server
    ("postgresql://other@db:5432/jobs", None),
    ("postgresql://app@db:5432/other", None),
    ("postgresql://app@db:6432/jobs", None),
    ("postgresql://app@pooler:5432/jobs", None),
    ("not a url", None),
])
def test_a_remembered_password_is_found_for_the_same_server_database_and_role(
        passwords, url, found) -> None:
    urls.remember_password("postgresql://app@db:5432/jobs", "s3cret")
    assert urls.password_for(url) == found


def test_a_remembered_password_is_put_in_a_url_that_names_none(passwords) -> None:
    urls.remember_password("postgresql://app@db/jobs", "s3 cr@et")
    urls.remember_password("postgresql://app@elsewhere/jobs", None)  # nothing to remember

    given = urls.with_remembered_password("postgresql://app@db/jobs?sslmode=require")
    assert conninfo_to_dict(given) == {"user": "app", "host": "db", "dbname": "jobs",
                                       "sslmode": "require", "password": "s3 cr@et"}
    assert conninfo_to_dict(urls.with_remembered_password("host=db dbname=jobs user=app"))[
        "password"] == "s3 cr@et"
    # a URL's own password wins; a URL nothing was remembered for is left alone
    assert urls.with_remembered_password("postgresql://app:mine@db/jobs") == (
        "postgresql://app:mine@db/jobs")
    assert urls.with_remembered_password("postgresql://app@elsewhere/jobs") == (
        "postgresql://app@elsewhere/jobs")


def test_celery_shows_the_direct_url_without_its_password_and_its_connections_use_it(
        passwords) -> None:
    from celery import Celery

    from beat.leadership import Leadership
    from config.celeryconfig import celery_config
    from config.settings import load_settings

    # Given the pgjobs configuration of a direct URL (PostgreSQL past a pooler) with a password
    app = Celery("redacted-direct", set_as_current=False)
    app.conf.update(celery_config(load_settings(
        database_url="postgresql://app:p00ler@127.0.0.1:1/jobs",
        database_direct_url="postgresql://app:d1rect@127.0.0.1:2/jobs")))
    connection = app.connection_for_write()

    # Then Celery's settings (`inspect conf`, `celery report`) and the connection's info as
    # `inspect stats` sends it (without its password field) show neither password
    stats = {key: value for key, value in connection.info().items() if key != "password"}
    shown = repr(app.conf.table(censored=True)) + repr(stats)
    assert "p00ler" not in shown
    assert "d1rect" not in shown
    assert connection.info()["transport_options"]["direct_url"] == (
        "postgresql://app@127.0.0.1:2/jobs")
    # And the broker's LISTEN connection, results' LISTEN connection and beat's leader lock
    # connect with the direct URL's password
    direct = {"host": "127.0.0.1", "port": "2", "password": "d1rect"}
    assert conninfo_to_dict(connection.transport.listener._conninfo).items() >= direct.items()
    assert conninfo_to_dict(app.backend.listen_conninfo).items() >= direct.items()
    lock = Leadership(app.conf.beat_lock_dburi)._engine.url
    assert (lock.host, lock.port, lock.password) == ("127.0.0.1", 2, "d1rect")
