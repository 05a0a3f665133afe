"""``pgjobs health worker|beat``: exit 0 only when the process is alive and working.

For orchestrators (Kubernetes liveness probes, systemd watchdogs, load-balancer checks):
one line on stdout when healthy, one ``Error:`` line and exit 1 otherwise.

- ``worker``: a worker's consumer row with a running lease (its heartbeat is fresh) AND an answer
  to Celery's ``ping`` within ``--timeout``. The heartbeat alone would pass a frozen
  worker whose lease has not lapsed yet; the ping alone says nothing about its broker
  connection.
- ``beat``: a beat holds the leader lock AND its last pass (the statement its lock
  connection ran last: it confirms the lock before every pass) is at most ``--max-age``
  seconds old. A frozen (SIGSTOPped) leader keeps its lock but stops passing.
"""

from __future__ import annotations

import click

from config.ops import snapshot as snap
from config.ops.common import Bounded, OneLineGroup, admin, settings


@click.group(cls=OneLineGroup)
def health() -> None:
    """Health checks for orchestrators: exit 0 only when healthy."""



@health.command()
@click.option("--hostname", metavar="NODE", help="This worker only, e.g. celery@web-1 "
              "(the worker's -n); default: any worker.")
@click.option("--timeout", type=Bounded(0.1, 3600), default=5.0, show_default=True,
              help="Seconds to wait for the ping's answer.")
def worker(hostname: str | None, timeout: float) -> None:
    """A worker with a fresh heartbeat answers a ping within --timeout."""
    _check_node_name(hostname)
    with admin() as api:
        live = snap.workers(api, settings().visibility_timeout)
    fresh = [w for w in live if hostname is None or w.name == hostname]
    if not fresh:
        who = f"worker {hostname}" if hostname else "any worker"
        raise click.ClickException(f"no fresh heartbeat from {who}: is it running? "
                                   "(see `pgjobs status`)")
    answered = _ping(hostname, timeout)
    if not answered:
        raise click.ClickException(
            f"{hostname or 'no worker'} did not answer a ping within {timeout:g}s"
            f"{'' if hostname else ' (none answered)'}")
    age = min(w.heartbeat_age_s for w in fresh)
    click.echo(f"healthy: {', '.join(sorted(answered))} answered; heartbeat {age:.1f}s ago")


def _check_node_name(nodename: str | None) -> None:
    if nodename is None:
        return
    name, at, host = nodename.partition("@")
    if not at or not name or not host:
        raise click.ClickException(
            f"--hostname {nodename!r} is not a worker node name; expected NAME@HOST, "
            "e.g. celery@web-1 (see `pgjobs status`)")


def _ping(nodename: str | None, timeout: float) -> list[str]:
    """Node names that answered Celery's ping."""
    from config.celery import app

    # A connection of its own, closed at once: that retires the reply queue's consumer,
    # which would otherwise count as a live worker until its lease lapsed.
    with app.connection_for_write() as connection:
        # Any one answer will do: without a limit, a ping of all workers waits the whole
        # timeout.
        replies = app.control.ping(destination=[nodename] if nodename else None,
                                   timeout=timeout, limit=1, connection=connection)
    return [name for reply in replies or [] for name in reply]


@health.command()
@click.option("--max-age", "max_age", type=Bounded(1, 86400), default=30.0,
              show_default=True, help="Seconds since the leader's last pass.")
def beat(max_age: float) -> None:
    """A beat holds the leader lock and its last pass is recent."""
    with admin() as api:
        leader = snap.beat(api.connect())
    if leader is None:
        raise click.ClickException("no beat holds the leader lock: start `celery -A config beat`")
    if leader.last_pass_age_s is None:
        raise click.ClickException(
            f"beat {leader.leader} holds the lock, but this database role cannot see its "
            "activity: run the check as beat's role, or GRANT pg_read_all_stats to this one")
    if leader.last_pass_age_s > max_age:
        raise click.ClickException(
            f"beat {leader.leader} holds the lock but its last pass was "
            f"{leader.last_pass_age_s:.0f}s ago (more than {max_age:g}s): it may be stuck")
    click.echo(f"healthy: {leader.leader} leads; last pass {leader.last_pass_age_s:.1f}s ago")
