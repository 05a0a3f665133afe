"""``pgjobs dead``: list, retry and purge dead letters (``pgjobs_broker_dead_letter``).

A message lands there when it cannot become a Celery message, when a worker rejects it
without requeueing, or after ``max_deliveries``. Retrying puts it back in its queue as a
new message, ready now; purging deletes it. Ids given that do not match make the command
fail before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from broker.admin import Admin, DeadLetter, chunks
from config.ops.common import (
    LIST_LIMIT,
    ROW_ID,
    Bounded,
    OneLineGroup,
    admin,
    batched_progress,
    echo_json,
    iso,
)

BATCH = 1000
"""Dead letters moved or deleted per statement (each commits on its own)."""
MAX_AGE_DAYS = 36500
"""The largest ``purge --older-than``: a hundred years."""


@click.group(cls=OneLineGroup)
def dead() -> None:
    """List, retry or purge dead letters."""



@dead.command(name="list")
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(1, LIST_LIMIT), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="A JSON list of {id, queue, task, task_id, reason, deliveries, died_at}.")
def list_(queue: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, oldest first: id, queue, task, reason, deliveries, when."""
    with admin() as api:
        letters = api.dead_letters(queue, limit)
    if as_json:
        echo_json([_as_dict(letter) for letter in letters])
    elif not letters:
        click.echo("no dead letters" + (f" in queue {queue}" if queue else ""))
    else:
        click.echo("\n".join(_line(letter) for letter in letters))


def _as_dict(letter: DeadLetter) -> dict[str, object]:
    return {"id": letter.id, "queue": letter.queue, "task": letter.summary.task,
            "task_id": letter.summary.task_id, "reason": letter.reason,
            "deliveries": letter.deliveries, "died_at": iso(letter.died_at)}


def _line(letter: DeadLetter) -> str:
    task = letter.summary.task or "?"
    return (f"{letter.id}  {letter.queue}  {task}  {letter.reason}  "
            f"deliveries={letter.deliveries}  {letter.died_at.isoformat(timespec='seconds')}")


@dead.command()
@click.argument("ids", nargs=-1, type=ROW_ID)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue).")
@click.option("--queue", help="Only this queue.")
def retry(ids: tuple[int, ...], all_: bool, queue: str | None) -> None:
    """Put dead letters IDS (or --all) back in their queue, ready now."""
    done = _apply(ids, all_, queue, None, Admin.retry_dead, "retrying")
    click.echo(f"retried {done} dead letter{'s' if done != 1 else ''}")


@dead.command()
@click.argument("ids", nargs=-1, type=ROW_ID)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue).")
@click.option("--queue", help="Only this queue.")
@click.option("--older-than", "older_than", type=Bounded(0, MAX_AGE_DAYS, low_open=True),
              metavar="DAYS", help="Only those that died more than DAYS ago.")
def purge(ids: tuple[int, ...], all_: bool, queue: str | None,
          older_than: float | None) -> None:
    """Delete dead letters IDS (or --all)."""
    done = _apply(ids, all_, queue, older_than, Admin.purge_dead, "purging")
    click.echo(f"purged {done} dead letter{'s' if done != 1 else ''}")


def _apply(ids: tuple[int, ...], all_: bool, queue: str | None, older_than: float | None,
           action: Callable[[Admin, Sequence[int]], int], label: str) -> int:
    if bool(ids) == all_:
        raise click.ClickException("give dead letter ids, or --all (see `pgjobs dead list`)")
    with admin() as api:
        selected = api.select_dead(list(ids) if ids else None, queue, older_than)
        _check_found(ids, selected, queue, older_than)
        return sum(action(api, batch) for batch in
                   batched_progress(chunks(selected, BATCH), len(selected), label))


def _check_found(ids: tuple[int, ...], selected: list[int], queue: str | None,
                 older_than: float | None) -> None:
    missing = sorted(set(ids) - set(selected))
    if not missing:
        return
    where = "".join([f" in queue {queue}" if queue else "",
                     f" older than {older_than:g} days" if older_than else ""])
    raise click.ClickException(
        f"no dead letter {', '.join(map(str, missing))}{where}; nothing was changed "
        "(see `pgjobs dead list`)")
