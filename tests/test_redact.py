"""One redactor (``broker.urls.redact``) masks a password wherever libpq can take one, and
every start-up error uses it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from broker.urls import redact


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
