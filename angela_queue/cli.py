"""The `angela-queue` command: parse → call the library → print. Errors are one line."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from angela_queue import embedded, errors
from angela_queue.client import App, connect
from angela_queue.settings import Settings
from angela_queue.store import TaskStore

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    help="angela-queue: a durable job queue that lives in PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(
    help="Manage the embedded PostgreSQL (used when no DSN is set).", no_args_is_help=True
)
queue_app = typer.Typer(help="Create and configure queues.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(queue_app, name="queue")

out = Console()
err = Console(stderr=True)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="PostgreSQL DSN (default: ANGELA_QUEUE_DSN, DATABASE_URL, else embedded).",
        show_default=False,
    ),
]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def _settings(**overrides: Any) -> Settings:
    return Settings.load(overrides)


def _dsn(settings: Settings) -> str:
    return settings.dsn or embedded.start(settings.pgdata)


def _load_app(spec: str, settings: Settings) -> App:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--app must look like MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    obj = getattr(module, attr, None)
    if not isinstance(obj, App):
        raise CliError(f"{spec!r} is not an angela_queue.App")
    if settings.dsn and not obj.settings.dsn:
        obj.settings = Settings(**{**obj.settings.__dict__, "dsn": settings.dsn})
        obj._dsn = settings.dsn
    return obj


@app.command()
def migrate(dsn: DsnOption = None) -> None:
    """Create or upgrade the angela_queue schema (alembic upgrade head)."""
    from angela_queue import migrate as migrations

    target = _dsn(_settings(dsn=dsn))
    _check_reachable(target)
    migrations.upgrade(target)
    out.print(f"schema angela_queue at revision {migrations.current(target)}")


@app.command()
def worker(
    app_spec: Annotated[str, typer.Option("--app", help="Handlers: MODULE:ATTR of an App.")],
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue to serve (repeatable).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Tasks run at once.")
    ] = None,
    listen: Annotated[
        bool,
        typer.Option(
            "--listen/--no-listen", help="LISTEN/NOTIFY wake-up; --no-listen for poolers."
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    dsn: DsnOption = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT, then finish running tasks and exit 0."""
    from angela_queue.worker import run_worker

    _logging(log_level)
    settings = _settings(dsn=dsn)
    application = _load_app(app_spec, settings)
    code = run_worker(
        application, queues=tuple(queue) if queue else None, concurrency=concurrency, listen=listen
    )
    if code:
        raise typer.Exit(code)


@app.command()
def reap(
    once: Annotated[bool, typer.Option("--once", help="One pass, print it, exit (cron).")] = False,
    interval: Annotated[
        float | None,
        typer.Option(min=0.01, help="Seconds between passes (default: heartbeat_s)."),
    ] = None,
    heartbeat_timeout: Annotated[
        float | None,
        typer.Option(min=0.01, help="Silence after which a worker is dead (default 30)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR (--once: WARNING).")
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Reclaim the tasks of dead and wedged workers (every worker also does this itself).

    --once prints what it did in one line. Without it, it runs until SIGTERM/SIGINT and
    logs each pass that reclaimed something; it waits one heartbeat timeout after
    (re)connecting before judging anyone, so that workers get the time to beat.
    """
    import signal
    import threading

    from angela_queue.reaper import Reaper, ReaperConfig

    _logging(log_level or ("WARNING" if once else "INFO"))
    settings = _settings(dsn=dsn, heartbeat_timeout_s=heartbeat_timeout)
    reaper = Reaper(ReaperConfig.from_settings(settings, interval), _dsn(settings))
    if once:
        try:
            out.print(f"reap: {reaper.run_once().summary()}", highlight=False, soft_wrap=True)
        finally:
            reaper.close()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("angela_queue.reaper").info(
        "reaping every %g s; workers silent for %g s are dead",
        reaper.config.interval_s,
        reaper.config.heartbeat_timeout_s,
    )
    reaper.run_forever(stop)


@app.command()
def enqueue(
    kind: Annotated[str, typer.Argument(help="Task kind, e.g. conversation.analyze.")],
    payload: Annotated[str, typer.Option(help="JSON object.")] = "{}",
    priority: Annotated[int, typer.Option(help="1 (lowest) to 10 (highest).")] = 5,
    queue: Annotated[str, typer.Option(help="Queue name.")] = "default",
    delay: Annotated[float, typer.Option(help="Run no sooner than this many seconds.")] = 0.0,
    dedupe_key: Annotated[str | None, typer.Option(help="Skip if a live task has it.")] = None,
    dsn: DsnOption = None,
) -> None:
    """Enqueue one task and print its id."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise CliError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError("--payload must be a JSON object")
    if not 1 <= priority <= 10:
        raise CliError("--priority must be between 1 and 10")
    settings = _settings(dsn=dsn)
    client = App(settings, dsn=_dsn(settings))
    run_at = datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None
    with connect(client.dsn, autocommit=True) as conn:
        task_id = client.enqueue(
            kind,
            data,
            priority=priority,
            queue=queue,
            run_at=run_at,
            dedupe_key=dedupe_key,
            conn=conn,
        )
    out.print(task_id)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[float | None, typer.Option(help="Refresh every N seconds.")] = None,
    dsn: DsnOption = None,
) -> None:
    """Queues × tiers and workers at a glance."""
    target = _dsn(_settings(dsn=dsn))
    with connect(target, autocommit=True) as conn:
        store = TaskStore(conn)
        while True:
            data = {"queues": store.status_queues(), "workers": store.status_workers()}
            if as_json:
                out.print_json(json.dumps(data, default=str))
            else:
                if watch:
                    out.clear()
                _print_status(data)
            if not watch:
                return
            time.sleep(watch)


def _print_status(data: dict[str, Any]) -> None:
    queues = Table(title="queues")
    for col in ("queue", "tier", "pending", "running", "oldest wait s", "done 1h", "failed 1h"):
        queues.add_column(col, justify="right" if col not in ("queue", "tier") else "left")
    for r in data["queues"]:
        wait = "-" if r["oldest_wait_s"] is None else f"{float(r['oldest_wait_s']):.1f}"
        queues.add_row(
            r["queue"],
            r["tier"],
            str(r["pending"]),
            str(r["running"]),
            wait,
            str(r["succeeded_1h"]),
            str(r["failed_1h"]),
        )
    out.print(queues)
    workers = Table(title="workers (view worker_stats)")
    columns = ("id", "host", "pid", "status", "heartbeat s", "done", "failed", "avg ms")
    for col in (*columns, "running", "task", "last active"):
        workers.add_column(col)
    for w in data["workers"]:
        avg = "-" if w["avg_processing_ms"] is None else f"{w['avg_processing_ms']:.1f}"
        active = w["last_active_at"]
        workers.add_row(
            str(w["id"]),
            w["hostname"],
            str(w["pid"]),
            w["status"],
            f"{float(w['heartbeat_age_s']):.1f}",
            str(w["tasks_completed"]),
            str(w["tasks_failed"]),
            avg,
            str(w["tasks_running"]),
            str(w["current_task_id"] or "-"),
            "-" if active is None else active.strftime("%H:%M:%S"),
        )
    out.print(workers)


@queue_app.command("set")
def queue_set(
    name: Annotated[str, typer.Argument(help="Queue name (created if new).")],
    aging_rate: Annotated[float | None, typer.Option(help="Points per minute waited.")] = None,
    paused: Annotated[
        bool | None, typer.Option("--pause/--resume", help="Stop or resume claiming.")
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Create a queue or change its settings."""
    target = _dsn(_settings(dsn=dsn))
    with connect(target, autocommit=True) as conn:
        row = TaskStore(conn).queue_upsert(name, aging_rate=aging_rate, paused=paused)
    out.print(f"queue {row['name']}: aging_rate={row['aging_rate']} paused={row['paused']}")


@queue_app.command("list")
def queue_list(dsn: DsnOption = None) -> None:
    """List queues and their settings."""
    target = _dsn(_settings(dsn=dsn))
    with connect(target, autocommit=True) as conn:
        for row in TaskStore(conn).queue_list():
            out.print(
                f"{row['name']}: aging_rate={row['aging_rate']} paused={row['paused']} "
                f"max_size={row['max_size']}"
            )


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server (or find it running) and print its DSN."""
    out.print(embedded.start(_settings().pgdata))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    stopped = embedded.stop(_settings().pgdata)
    out.print("stopped" if stopped else "not running")


@db_app.command("status")
def db_status() -> None:
    """Whether the embedded server runs; exit 1 when it does not."""
    st = embedded.status(_settings().pgdata)
    out.print(
        f"{'running' if st.running else 'stopped'}  pgdata={st.pgdata}"
        + (f"  pid={st.pid}" if st.pid else "")
    )
    if not st.running:
        raise typer.Exit(1)


@db_app.command("url")
def db_url() -> None:
    """Print the embedded server's DSN; exit 1 when it is not running."""
    st = embedded.status(_settings().pgdata)
    if st.url is None:
        raise CliError("the embedded server is not running: `angela-queue db start`")
    out.print(st.url)


def _check_reachable(dsn: str) -> None:
    connect(dsn, connect_timeout=10).close()


def _logging(level: str) -> None:
    name = level.upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    logging.basicConfig(
        level=name, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    """Console entry point: every known failure is one line on stderr, never a traceback."""
    import psycopg

    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit
    except (CliError, errors.AngelaQueueError) as exc:
        _fail(str(exc))
    except psycopg.Error as exc:
        _fail(f"database error: {(exc.diag.message_primary or str(exc)).strip()}")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: click's own one-line message
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    err.print(f"error: {first}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
