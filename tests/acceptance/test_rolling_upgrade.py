"""Rolling deploys: a worker of the previous release keeps working while the next release's
`pgjobs migrate` runs, and after it.

"The previous release" is the code as it was just before the newest migration was added
(taken from git), on a database migrated by that code. Every migration pgjobs adds is thus
checked against the workers that run while it is applied.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import Processes
from tests.acceptance.deploy_scenario import codes
from tests.polling import wait_until

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "config" / "migrations" / "versions"

PUBLISH = """
import sys
from tasks import send_sign_in_email
first, count = int(sys.argv[1]), int(sys.argv[2])
for i in range(first, first + count):
    send_sign_in_email.delay(email=f"user{i}@example.com", name="User", code=f"{800000 + i}")
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def _previous_release() -> str:
    """The commit just before the newest migration was added (HEAD if it is not committed)."""
    newest = sorted(VERSIONS.glob("[0-9]*.py"))[-1].relative_to(ROOT)
    added = _git("log", "--diff-filter=A", "--format=%H", "-1", "--", str(newest))
    return f"{added}^" if added else "HEAD"


@pytest.fixture
def previous_release(tmp_path: Path) -> Path:
    """The previous release's code, unpacked from git."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", _previous_release()],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.fail(f"the rolling-upgrade test needs the repository's git history: {error}")
    tree = tmp_path / "previous"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _run(env: dict[str, str], cwd: Path, *argv: str) -> None:
    done = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_previous_release_worker_keeps_working_through_the_next_migration(
        previous_release, empty_db, smtp_inbox, tmp_path):
    inbox, smtp_url = smtp_inbox
    base = {**os.environ, "DATABASE_URL": empty_db, "SMTP_URL": smtp_url}
    base.pop("PYTHONPATH", None)
    old = {**base, "PYTHONPATH": str(previous_release)}
    new = {**base, "PYTHONPATH": str(ROOT)}
    migrate = ("-c", "from config.cli import main; main()", "migrate")

    # given the previous release migrated the database and runs a worker
    _run(old, previous_release, *migrate)
    workers = Processes(env=old, logdir=tmp_path)
    try:
        log = tmp_path / "old-worker.log"
        with log.open("w") as out:
            workers.running.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-c", "2",
                 "--loglevel=info"], env=old, cwd=previous_release, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))
        wait_until(lambda: "ready." in log.read_text(), 60, "the old worker to be ready")

        # when the next release migrates while tasks flow, and publishes afterwards
        _run(old, previous_release, "-c", PUBLISH, "0", "10")
        _run(new, ROOT, *migrate)
        _run(new, ROOT, "-c", PUBLISH, "10", "10")

        # then the old worker ran every one of them, exactly once
        expected = {f"{800000 + i}": 1 for i in range(20)}
        wait_until(lambda: sum(codes(inbox).values()) >= 20, 60, "twenty emails",
                   lambda: log.read_text()[-3000:])
        time.sleep(2)  # a duplicate would have arrived by now
        assert dict(codes(inbox)) == expected
        assert "Traceback" not in log.read_text()
    finally:
        workers.stop_all()
