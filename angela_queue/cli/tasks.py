"""Task commands for operators: requeue dropped tasks, retry failed ones, cancel."""

from __future__ import annotations

from typing import Annotated

import typer

from angela_queue.cli.common import CliError, DsnOption, app, load_settings, out, resolve_dsn
from angela_queue.client import connect
from angela_queue.store import TaskStore

QueueOption = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]
IdsArg = Annotated[list[int] | None, typer.Argument(help="Task ids.", show_default=False)]


def _report(rows: list[dict[str, object]], verb: str, left: str) -> None:
    if not rows:
        out.print(f"nothing to {verb}")
    for r in rows:
        out.print(f"{r['queue_name']}: {r['requeued']} {verb}d, {r['left_behind']} {left}")


@app.command()
def requeue(
    dropped: Annotated[bool, typer.Option("--dropped", help="Requeue dropped tasks.")] = False,
    queue: QueueOption = None,
    dsn: DsnOption = None,
) -> None:
    """Put dropped tasks back to pending, best first, as far as each queue's bound allows."""
    if not dropped:
        raise CliError("say what to requeue: --dropped")
    with connect(resolve_dsn(load_settings(dsn=dsn))) as conn:
        rows = TaskStore(conn).task_requeue("dropped", queue)
        conn.commit()
    _report(rows, "requeue", "still dropped (no room)")


@app.command()
def retry(
    ids: IdsArg = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed task.")] = False,
    queue: QueueOption = None,
    dsn: DsnOption = None,
) -> None:
    """Run failed tasks again (one more attempt each), within each queue's bound."""
    if not ids and not failed:
        raise CliError("give task ids, or --failed for every failed task")
    with connect(resolve_dsn(load_settings(dsn=dsn))) as conn:
        rows = TaskStore(conn).task_requeue("failed", queue, ids or None)
        conn.commit()
    _report(rows, "retrie", "still failed (no room)")


@app.command()
def cancel(
    ids: Annotated[list[int], typer.Argument(help="Task ids.", show_default=False)],
    dsn: DsnOption = None,
) -> None:
    """Cancel tasks that have not started (pending or dropped)."""
    with connect(resolve_dsn(load_settings(dsn=dsn)), autocommit=True) as conn:
        done = TaskStore(conn).task_cancel_many(ids)
    for task_id in ids:
        out.print(f"{task_id}: {'cancelled' if task_id in done else 'not pending, left alone'}")
