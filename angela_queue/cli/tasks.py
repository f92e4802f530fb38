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


@app.command()
def prune(
    older_than: Annotated[
        str, typer.Option(help="Age of finished tasks to delete: e.g. 90s, 15m, 12h, 7d, 2w.")
    ],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per batch.")] = 1000,
    dsn: DsnOption = None,
) -> None:
    """Delete finished tasks (and dead worker rows) older than --older-than, in batches."""
    from angela_queue.cleaner import Cleaner, CleanerConfig, parse_duration

    seconds = parse_duration(older_than)
    if seconds <= 0:
        raise CliError("--older-than must be more than 0")
    cleaner = Cleaner(CleanerConfig(retention_s=seconds, batch_size=batch_size, max_batches=10))
    tasks = workers = 0
    with connect(resolve_dsn(load_settings(dsn=dsn)), autocommit=True) as conn:
        while True:  # passes of at most 10 batches, each pass its own short transaction
            result = cleaner.run_once(TaskStore(conn))
            if result.skipped:
                raise CliError("another cleaner is running; try again shortly")
            tasks += result.tasks
            workers += result.workers
            if result.tasks < batch_size * 10:
                break
    out.print(
        f"pruned {tasks} finished task(s) and {workers} dead worker row(s) older than {older_than}"
    )
