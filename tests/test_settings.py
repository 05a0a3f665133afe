"""Settings: bad values stop start-up with one line that names the variable."""

import subprocess
import sys

import pytest

from config.celeryconfig import celery_config
from config.settings import SettingsError, load_settings, parse_smtp_url


def test_given_no_database_url_when_required_then_error_names_variable():
    settings = load_settings(database_url=None)
    with pytest.raises(SettingsError, match="^DATABASE_URL is not set"):
        settings.require_database_url()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database_url", "mysql://u:p@h/db", "DATABASE_URL must be a postgresql:// URL"),
        ("database_url", "postgresql://u:hunter2@h:port/db", "DATABASE_URL is malformed"),
        ("database_url", "postgresql://u:hunter2@h:99999/db",
         "DATABASE_URL names port 99999; a port is from 1 to 65535"),
        ("database_url", "postgresql://u:hunter2 x@h/db", "DATABASE_URL is malformed"),
        ("database_url", "postgresql://u@h/db?password=hunter2 x", "DATABASE_URL is malformed"),
        ("database_direct_url", "postgresql://u:hunter2@h:port/db",
         "DATABASE_DIRECT_URL is malformed"),
        ("broker_url", "redis://u:hunter2@h:6379/0",
         "BROKER_URL must be a postgresql:// URL (pgjobs' broker, the default) or an amqp://"),
        ("broker_url", "amqp://u:hunter2@h:port/", "BROKER_URL is malformed"),
        ("broker_url", "amqp://u:hunter2@:5672/", "BROKER_URL names no host"),
        ("smtp_url", "http://mail:25", "SMTP_URL must start with smtp://"),
        ("smtp_url", "smtp://u:hunter2@:25", "SMTP_URL names no host"),
        ("timezone", "Mars/Olympus", "TIMEZONE unknown time zone 'Mars/Olympus'"),
        ("timezone", "posix/Europe/Paris", "TIMEZONE unknown time zone 'posix/Europe/Paris'"),
        ("retention_tables", "[{", "RETENTION_TABLES is not valid JSON"),
        ("database_prepared_statements", "maybe",
         "DATABASE_PREPARED_STATEMENTS: Input should be a valid boolean"),
    ],
)
def test_given_bad_value_then_one_line_names_it_without_password(field, value, message):
    with pytest.raises(SettingsError) as caught:
        load_settings(**{field: value})
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "hunter2" not in text


VISIBILITY_RANGE = "must be a number of seconds from 1 to 86400 (1 day)"
DAYS_RANGE = "must be a number of days from 0.01 to 36500"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        *(("visibility_timeout", value, f"VISIBILITY_TIMEOUT {VISIBILITY_RANGE}, got {value!r}")
          for value in ("inf", "nan", "1e13", "0.001", "-5", "soon", "")),
        ("result_retention_days", "1e13", f"RESULT_RETENTION_DAYS {DAYS_RANGE}"),
        ("result_retention_days", "0", f"RESULT_RETENTION_DAYS {DAYS_RANGE}"),
        ("sent_email_retention_days", "inf", f"SENT_EMAIL_RETENTION_DAYS {DAYS_RANGE}"),
        ("dead_letter_retention_days", "inf", f"DEAD_LETTER_RETENTION_DAYS {DAYS_RANGE}"),
        ("revoke_retention_days", "0", f"REVOKE_RETENTION_DAYS {DAYS_RANGE}"),
        ("retention_batch_size", "1e9", "RETENTION_BATCH_SIZE must be a whole number of rows "
         "from 1 to 100000, got '1e9'"),
        ("retention_batch_size", "2.5", "RETENTION_BATCH_SIZE must be a whole number of rows"),
        ("retention_tables", '[{"table": "s", "column": "c", "max_age_days": "nan"}]',
         f"RETENTION_TABLES[0].max_age_days {DAYS_RANGE}, got 'nan'"),
        ("mail_from", "Shop <shop@example.com>\r\nBcc: all@example.com",
         "MAIL_FROM must be one line without control characters"),
        ("mail_from", "not an address", "MAIL_FROM must be one email address"),
        ("mail_from", "a@example.com, b@example.com", "MAIL_FROM must be one email address"),
        ("mail_from", "Shop <shop@-example.com>", "MAIL_FROM has an invalid address"),
    ],
)
def test_given_a_value_out_of_range_then_one_line_names_it_and_the_range(field, value, message):
    with pytest.raises(SettingsError) as caught:
        load_settings(**{field: value})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "kept"),
    [
        ("visibility_timeout", "1", 1.0),
        ("visibility_timeout", "86400", 86400.0),
        ("retention_batch_size", "100000", 100000),
        ("result_retention_days", "0.5", 0.5),
        ("dead_letter_retention_days", "36500", 36500.0),
        ("revoke_retention_days", "0.01", 0.01),
        ("mail_from", "pgjobs <no-reply@localhost>", "pgjobs <no-reply@localhost>"),
        ("mail_from", '"Shop, Inc." <shop@shop.example>', '"Shop, Inc." <shop@shop.example>'),
        ("mail_from", "no-reply@shop.example", "no-reply@shop.example"),
    ],
)
def test_values_in_range_are_kept(field, value, kept):
    assert getattr(load_settings(**{field: value}), field) == kept


@pytest.mark.parametrize(("variable", "value", "line"), [
    ("VISIBILITY_TIMEOUT", "inf", f"pgjobs: VISIBILITY_TIMEOUT {VISIBILITY_RANGE}, got 'inf'"),
    ("MAIL_FROM", "Shop <shop@example.com>\nBcc: all@example.com",
     "pgjobs: MAIL_FROM must be one line without control characters, "
     "e.g. 'Shop <no-reply@shop.example>'"),
])
def test_a_worker_with_a_bad_setting_exits_with_one_line(variable, value, line, tmp_path):
    env = {"DATABASE_URL": "postgresql://u@127.0.0.1:1/db", variable: value, "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "worker"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [line]


def test_smtp_url_forms():
    plain = parse_smtp_url("smtp://user:p%40ss@mail.example:2525?starttls=true")
    assert (plain.host, plain.port, plain.username, plain.password) == (
        "mail.example", 2525, "user", "p@ss")
    assert plain.starttls and not plain.implicit_tls
    implicit = parse_smtp_url("smtps://mail.example")
    assert implicit.implicit_tls and implicit.port == 465


def test_postgres_scheme_is_normalised():
    settings = load_settings(database_url="postgres://u:p@h:5432/db")
    assert settings.database_url == "postgresql://u:p@h:5432/db"


def test_a_percent_encoded_password_is_kept_as_given():
    url = "postgresql://u:p%20%40%3A%2F%25%3F%23%26q@h:5432/db"
    assert load_settings(database_url=url).database_url == url
    assert load_settings(database_url=url.replace("postgresql", "postgres", 1)).database_url \
        == url


def test_worker_with_malformed_database_url_exits_with_one_line():
    env = {"DATABASE_URL": "postgresql://u:hunter2@h:notaport/db", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "worker"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "pgjobs: DATABASE_URL is malformed: postgresql://u:**@h:notaport/db; expected "
        "postgresql://user:pass@host:port/db, with special characters in user and password "
        "percent-encoded (a space is %20)"]


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_unreachable_database_stops_start_up_with_one_line(role, tmp_path):
    env = {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", role],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "pgjobs: DATABASE_URL: cannot connect to postgresql://u:**@127.0.0.1:1/db")
    assert "Traceback" not in result.stderr


def test_passwords_stay_out_of_settings_repr():
    settings = load_settings(database_url="postgresql://u:hunter2@h/db",
                             smtp_url="smtp://u:hunter3@mail:25")
    assert "hunter2" not in repr(settings)
    assert "hunter3" not in repr(settings) + repr(settings.smtp)


def test_migrate_against_unreachable_database_prints_one_line(tmp_path):
    env = {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", "from config.cli import main; main()", "migrate"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: DATABASE_URL: cannot connect to postgresql://u:**@127.0.0.1:1/db (connection "
        'failed: connection to server at "127.0.0.1", port 1 failed: Connection refused); '
        "check that PostgreSQL is running and the host and port in DATABASE_URL are right"]


def test_sqlalchemy_url_adds_the_driver_and_the_connect_timeout_once():
    from config.urls import sqlalchemy_url

    once = sqlalchemy_url("postgresql://u:p@h/db")
    assert once == "postgresql+psycopg://u:p@h/db?connect_timeout=5"
    assert sqlalchemy_url(once) == once
    assert sqlalchemy_url("postgresql://h/db?sslmode=require&connect_timeout=9") == \
        "postgresql+psycopg://h/db?sslmode=require&connect_timeout=9"


def test_direct_and_broker_urls_default_to_database_url():
    settings = load_settings(database_url="postgresql://u@pooler:6432/db")
    assert settings.require_direct_url() == "postgresql://u@pooler:6432/db"
    assert settings.require_broker_url() == "postgresql://u@pooler:6432/db"
    assert settings.broker_is_postgres


def test_celery_config_sends_sessions_to_the_direct_url_and_the_rest_to_the_pooler():
    settings = load_settings(database_url="postgresql://u@pooler:6432/db",
                             database_direct_url="postgres://u@db:5432/db")
    config = celery_config(settings)
    assert config["broker_url"] == "postgresql://u@pooler:6432/db"
    assert config["broker_transport_options"]["direct_url"] == "postgresql://u@db:5432/db"
    assert config["result_backend"].endswith("+postgresql://u@pooler:6432/db")
    assert config["result_backend_transport_options"]["direct_url"] == (
        "postgresql://u@db:5432/db")
    assert config["beat_dburi"].startswith("postgresql+psycopg://u@pooler:6432/db")
    assert config["beat_lock_dburi"].startswith("postgresql+psycopg://u@db:5432/db")


@pytest.mark.parametrize(("environment", "prepared"), [
    ({}, True),
    ({"database_direct_url": "postgresql://u@db:5432/db"}, False),
    ({"database_direct_url": "postgresql://u@db:5432/db",
      "database_prepared_statements": "true"}, True),
    ({"database_prepared_statements": "false"}, False),
], ids=["no-pooler", "pooler", "pooler-that-prepares", "turned-off"])
def test_prepared_statements_are_used_unless_database_url_is_a_pooler(environment, prepared):
    # Given DATABASE_URL, with or without a direct URL beside it, and maybe the setting
    settings = load_settings(database_url="postgresql://u@pooler:6432/db", **environment)

    # When Celery is configured, then the broker and the results prepare statements or not
    config = celery_config(settings)
    assert settings.prepared_statements is prepared
    assert config["broker_transport_options"]["prepared_statements"] is prepared
    assert config["result_backend_transport_options"]["prepared_statements"] is prepared


def test_an_amqp_broker_url_moves_only_the_broker_to_rabbitmq():
    settings = load_settings(database_url="postgresql://u@db:5432/db",
                             broker_url="amqp://guest:guest@rabbit:5672//")
    config = celery_config(settings)
    assert not settings.broker_is_postgres
    assert config["broker_url"] == "amqp://guest:guest@rabbit:5672//"
    assert "broker_transport" not in config
    assert config["result_backend"].endswith("+postgresql://u@db:5432/db")
    assert config["beat_dburi"].startswith("postgresql+psycopg://u@db:5432/db")
