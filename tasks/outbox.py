"""Development delivery: with no SMTP_URL, each email becomes a ``.eml`` file in OUTBOX_DIR."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path


def write_to_outbox(message: EmailMessage, outbox_dir: Path, task_id: str) -> Path:
    """Write ``message`` as ``<utc time>-<task id>.eml``; a reader never sees a half file."""
    outbox_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = outbox_dir / f"{stamp}-{_safe(task_id)}.eml"
    handle, temporary = tempfile.mkstemp(dir=outbox_dir, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(message.as_bytes())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _safe(task_id: str) -> str:
    # Task ids are chosen by callers: keep them from naming another folder.
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in task_id)
