"""Registers the operator commands on the ``pgjobs`` group."""

from __future__ import annotations

import click

from config.ops.cleanup import cleanup
from config.ops.dead import dead
from config.ops.failed import failed
from config.ops.health import health
from config.ops.metrics import metrics
from config.ops.status import status


def register(main: click.Group) -> None:
    for command in (status, dead, failed, health, metrics, cleanup):
        main.add_command(command)
