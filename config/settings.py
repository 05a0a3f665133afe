"""pgjobs settings: one validated object, read from the environment and an optional ``.env``.

Every field documents its environment variable, default and unit. A bad value
raises :class:`SettingsError`, whose message is one line naming the variable and
never containing a password.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.urls import redact
from config.limits import LIMITS, check_mail_from
from config.urls import AMQP_SCHEMES, POSTGRES_SCHEMES, check_amqp_url, normalise_database_url


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line, safe to print."""


class RetentionRule(BaseModel):
    """Rows of ``table`` whose ``column`` is older than ``max_age_days`` are deleted nightly."""

    table: str = Field(min_length=1, max_length=63)
    column: str = Field(min_length=1, max_length=63)
    max_age_days: float

    @field_validator("max_age_days", mode="before")
    @classmethod
    def _check_max_age(cls, value: object) -> float:
        return LIMITS["max_age_days"].check(value)


class SmtpTarget(BaseModel):
    """A parsed ``SMTP_URL``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    implicit_tls: bool = False
    starttls: bool = False


class Settings(BaseSettings):
    """All of pgjobs' knobs. Environment variable names are the field names, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, repr=False)
    """DATABASE_URL: ``postgresql://user:pass@host:port/db``. Broker, results and schedule all
    live there. Unset: ``pgjobs dev`` starts an embedded PostgreSQL; workers and beat refuse."""

    database_direct_url: str | None = Field(default=None, repr=False)
    """DATABASE_DIRECT_URL: a URL that reaches PostgreSQL itself, for the few connections that
    need a session of their own: the LISTEN connections that wake workers and result waiters,
    beat's leader lock, and ``pgjobs migrate``. Set it when DATABASE_URL points at a
    transaction-pooling PgBouncer. Default: DATABASE_URL."""

    database_prepared_statements: bool | None = None
    """DATABASE_PREPARED_STATEMENTS: whether pgjobs' connections on DATABASE_URL (and a
    PostgreSQL BROKER_URL) prepare their statements on the server, so that each is parsed and
    planned once per connection: a publish or a stored result then costs the server about a
    third as much. Default: on, unless DATABASE_DIRECT_URL is set, which says DATABASE_URL is
    a transaction-pooling PgBouncer, where prepared statements fail. ``false`` turns them off;
    ``true`` keeps them on (a PgBouncer in session mode, with DATABASE_DIRECT_URL set to its URL
    too, or 1.21+ with ``max_prepared_statements``)."""

    broker_url: str | None = Field(default=None, repr=False)
    """BROKER_URL: where messages go. Default: DATABASE_URL (pgjobs' PostgreSQL broker).
    ``amqp://user:pass@host:5672/vhost`` moves the broker to RabbitMQ; results and the
    schedule stay in DATABASE_URL."""

    smtp_url: str | None = Field(default=None, repr=False)
    """SMTP_URL: ``smtp://user:pass@host:port`` (plain), ``smtps://`` (implicit TLS, port 465
    by default) or ``smtp://...?starttls=true``. Unset: mails go to ``OUTBOX_DIR`` and the log."""

    mail_from: str = "pgjobs <no-reply@localhost>"
    """MAIL_FROM: the From header of every email: one address, with or without a name."""

    timezone: str = "UTC"
    """TIMEZONE: IANA name (``Europe/Paris``) in which default schedules are read."""

    log_level: str = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL."""

    result_retention_days: float = 7
    """RESULT_RETENTION_DAYS: days task results are kept before the nightly clean-up deletes
    them (default 7; 0.01 to 36500)."""

    sent_email_retention_days: float = 30
    """SENT_EMAIL_RETENTION_DAYS: days the sent-email log is kept (default 30; 0.01 to
    36500)."""

    dead_letter_retention_days: float = 14
    """DEAD_LETTER_RETENTION_DAYS: days a dead letter is kept before the nightly clean-up
    deletes it (default 14; 0.01 to 36500)."""

    revoke_retention_days: float = 30
    """REVOKE_RETENTION_DAYS: days a revoked task id is remembered (default 30; 0.01 to
    36500); a task revoked longer ago whose ETA is still ahead would run."""

    retention_tables: Annotated[list[RetentionRule], NoDecode] = Field(default_factory=list)
    """RETENTION_TABLES: JSON list of extra rules for the nightly clean-up, e.g.
    ``[{"table": "sessions", "column": "created_at", "max_age_days": 90}]`` (default none;
    ``max_age_days`` from 0.01 to 36500)."""

    retention_batch_size: int = 5000
    """RETENTION_BATCH_SIZE: rows deleted per short transaction by the clean-up (default 5000;
    1 to 100000)."""

    outbox_dir: Path = Path(".pgjobs/outbox")
    """OUTBOX_DIR: where emails are written when SMTP_URL is unset (default ``.pgjobs/outbox``)."""

    data_dir: Path = Path(".pgjobs/pgdata")
    """DATA_DIR: the embedded PostgreSQL's data folder for ``pgjobs dev`` (default
    ``.pgjobs/pgdata``)."""

    visibility_timeout: float = 60
    """VISIBILITY_TIMEOUT: seconds after a worker's last heartbeat before the messages it held
    go back to their queue (default 60; 1 to 86400, one day)."""

    @field_validator("result_retention_days", "sent_email_retention_days",
                     "dead_letter_retention_days", "revoke_retention_days",
                     "retention_batch_size", "visibility_timeout", mode="before")
    @classmethod
    def _check_limits(cls, value: object, info: ValidationInfo) -> float:
        return LIMITS[info.field_name].check(value)

    @field_validator("mail_from")
    @classmethod
    def _check_mail_from(cls, value: str) -> str:
        return check_mail_from(value)

    @field_validator("database_url", "database_direct_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        return None if value in (None, "") else normalise_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        scheme = value.partition("://")[0]
        if scheme in AMQP_SCHEMES:
            check_amqp_url(value)
            return value
        if scheme not in POSTGRES_SCHEMES:
            raise ValueError("must be a postgresql:// URL (pgjobs' broker, the default) or an "
                             "amqp:// URL (RabbitMQ)")
        return normalise_database_url(value)

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parse_smtp_url(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        if not is_known_timezone(value):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("retention_tables", mode="before")
    @classmethod
    def _decode_retention_tables(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
        return value

    @property
    def smtp(self) -> SmtpTarget | None:
        return parse_smtp_url(self.smtp_url) if self.smtp_url else None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SettingsError(
                "DATABASE_URL is not set: set it to postgresql://user:pass@host:port/db, "
                "or run `pgjobs dev` for an embedded database"
            )
        return self.database_url

    def require_direct_url(self) -> str:
        """DATABASE_DIRECT_URL, or DATABASE_URL when it is unset."""
        return self.database_direct_url or self.require_database_url()

    @property
    def direct_url_name(self) -> str:
        """The setting :meth:`require_direct_url` reads, for messages about that URL."""
        return "DATABASE_DIRECT_URL" if self.database_direct_url else "DATABASE_URL"

    def require_broker_url(self) -> str:
        """BROKER_URL, or DATABASE_URL when it is unset."""
        return self.broker_url or self.require_database_url()

    @property
    def prepared_statements(self) -> bool:
        """DATABASE_PREPARED_STATEMENTS, or whether DATABASE_DIRECT_URL is unset."""
        if self.database_prepared_statements is not None:
            return self.database_prepared_statements
        return self.database_direct_url is None

    @property
    def broker_is_postgres(self) -> bool:
        """Whether messages go through pgjobs' PostgreSQL broker (not RabbitMQ)."""
        return self.broker_url is None or self.broker_url.startswith("postgresql://")


@lru_cache(maxsize=1)
def _listed_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def is_known_timezone(name: str) -> bool:
    """Whether ``name`` is a listed IANA zone. ``ZoneInfo(name)`` is not enough: it also opens
    files such as ``posix/Europe/Paris`` that sqlalchemy-celery-beat refuses to store."""
    return name in _listed_timezones()


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse ``smtp[s]://[user[:pass]@]host[:port][?starttls=true]``; ValueError if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"is malformed: {redact(url)}") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("names no host; expected smtp://user:pass@host:port")
    starttls = parse_qs(parts.query).get("starttls", ["false"])[-1].lower()
    if starttls not in ("true", "false", "1", "0"):
        raise ValueError("has starttls= that is neither true nor false")
    implicit = parts.scheme == "smtps"
    return SmtpTarget(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        implicit_tls=implicit,
        starttls=starttls in ("true", "1"),
    )


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = _location(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{name} {message}" if first["type"] == "value_error" else f"{name}: {message}"


def _location(loc: tuple) -> str:
    """``VISIBILITY_TIMEOUT``, or ``RETENTION_TABLES[0].max_age_days`` for a nested field."""
    if not loc:
        return "settings"
    name = str(loc[0]).upper()
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def load_settings(**overrides: object) -> Settings:
    """Read settings now; raise SettingsError with one safe line on the first bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
