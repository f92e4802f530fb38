"""Core commands: migrate, worker, enqueue, status, queue, db."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from angela_queue import embedded
from angela_queue.cli.common import (
    CliError,
    DsnOption,
    check_reachable,
    db_app,
    load_app,
    load_settings,
    out,
    queue_app,
    resolve_dsn,
    setup_logging,
)
from angela_queue.cli.common import app as app
from angela_queue.client import App, connect
from angela_queue.settings import PROFILES
from angela_queue.store import TaskStore


@app.command()
def migrate(dsn: DsnOption = None) -> None:
    """Create or upgrade the angela_queue schema (alembic upgrade head)."""
    from angela_queue import migrate as migrations

    target = resolve_dsn(load_settings(dsn=dsn))
    check_reachable(target)
    migrations.upgrade(target)
    out.print(f"schema angela_queue at revision {migrations.current(target)}")


MAX_DELAY_S = 100 * 365.25 * 86400  # a delay past this is a typo, and past ~9999 AD an overflow


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
        bool | None,
        typer.Option(
            "--listen/--no-listen",
            help="LISTEN/NOTIFY wake-up; --no-listen for poolers (default: ANGELA_QUEUE_LISTEN).",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: ANGELA_QUEUE_LOG_LEVEL)."),
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="text (one readable line per event) or json (one object).")
    ] = "text",
    dsn: DsnOption = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT, then finish running tasks and exit 0."""
    from angela_queue.worker import run_worker

    settings = load_settings(dsn=dsn)
    setup_logging(log_level or settings.log_level, log_format)
    application = load_app(app_spec, settings)
    code = run_worker(
        application, queues=tuple(queue) if queue else None, concurrency=concurrency, listen=listen
    )
    if code:
        raise typer.Exit(code)


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
    if not 0 <= delay <= MAX_DELAY_S:
        raise CliError(f"--delay must be between 0 and {MAX_DELAY_S:.0f} seconds (100 years)")
    settings = load_settings(dsn=dsn)
    client = App(settings, dsn=resolve_dsn(settings))
    with connect(client.dsn, autocommit=True) as conn:
        run_at = None
        if delay > 0:  # counted on the database's clock, not this host's
            run_at = TaskStore(conn).database_now() + timedelta(seconds=delay)
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
    watch: Annotated[
        float | None, typer.Option(min=0.1, help="Refresh in place every N seconds.")
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also the queue × tier rows with nothing to show.")
    ] = False,
    dsn: DsnOption = None,
) -> None:
    """Queues × tiers and workers at a glance (the queue_stats and worker_stats views)."""
    from angela_queue.cli.monitor import show_status

    settings = load_settings(dsn=dsn)
    show_status(settings, resolve_dsn(settings), as_json=as_json, watch=watch, show_all=show_all)


@queue_app.command("set")
def queue_set(
    name: Annotated[str, typer.Argument(help="Queue name (created if new).")],
    aging_rate: Annotated[
        float | None, typer.Option(help="Points per minute waited; re-ranks pending tasks.")
    ] = None,
    paused: Annotated[
        bool | None, typer.Option("--pause/--resume", help="Stop or resume claiming.")
    ] = None,
    target_wait: Annotated[
        list[str] | None,
        typer.Option(help="Per-queue target wait TIER=SECONDS (TIER= removes it); repeatable."),
    ] = None,
    max_size: Annotated[
        int | None, typer.Option(min=1, help="Bound: most live (pending + running) tasks.")
    ] = None,
    unbounded: Annotated[bool, typer.Option(help="Remove the bound.")] = False,
    drop_below: Annotated[
        int | None,
        typer.Option(min=1, max=11, help="When full, tasks with a lower base are dropped."),
    ] = None,
    overflow_policy: Annotated[
        str | None, typer.Option(help="drop_low (default) or reject (never drop).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Bound from a profile: low 20, standard 50, high 100.")
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Create a queue or change its settings, in one transaction."""
    from angela_queue.cli.priority import parse_target_waits

    waits = parse_target_waits(target_wait or [])
    if profile is not None:
        if profile not in PROFILES:
            raise CliError(f"--profile must be one of {', '.join(PROFILES)}")
        max_size = max_size or int(PROFILES[profile]["max_queue_size"])
    if unbounded and max_size is not None:
        raise CliError("--unbounded and --max-size/--profile contradict each other")
    target = resolve_dsn(load_settings(dsn=dsn))
    with connect(target) as conn:
        store = TaskStore(conn)
        row = store.queue_upsert(name, aging_rate=aging_rate, paused=paused)
        store.queue_set_bound(
            name,
            max_size=max_size,
            unbounded=unbounded,
            overflow_policy=overflow_policy,
            drop_below_priority=drop_below,
        )
        for tier, seconds in waits:
            store.queue_set_target_wait(name, tier, seconds)
        row = store.queue_get(name) or row
        conn.commit()
    out.print(_describe_queue(row))


def _describe_queue(row: dict[str, Any]) -> str:
    waits = ", ".join(f"{k}={v}" for k, v in sorted(row["target_waits"].items()))
    return (
        f"{row['name']}: aging_rate={row['aging_rate']} paused={row['paused']} "
        f"max_size={row['max_size']} drop_below={row['drop_below_priority']} "
        f"overflow_policy={row['overflow_policy']}" + (f" target_waits: {waits}" if waits else "")
    )


@queue_app.command("list")
def queue_list(dsn: DsnOption = None) -> None:
    """List queues and their settings."""
    target = resolve_dsn(load_settings(dsn=dsn))
    with connect(target, autocommit=True) as conn:
        for row in TaskStore(conn).queue_list():
            out.print(_describe_queue(row))


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server (or find it running) and print its DSN."""
    out.print(embedded.start(load_settings().pgdata))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    stopped = embedded.stop(load_settings().pgdata)
    out.print("stopped" if stopped else "not running")


@db_app.command("status")
def db_status() -> None:
    """Whether the embedded server runs; exit 1 when it does not."""
    st = embedded.status(load_settings().pgdata)
    out.print(
        f"{'running' if st.running else 'stopped'}  pgdata={st.pgdata}"
        + (f"  pid={st.pid}" if st.pid else "")
    )
    if not st.running:
        raise typer.Exit(1)


@db_app.command("url")
def db_url() -> None:
    """Print the embedded server's DSN; exit 1 when it is not running."""
    st = embedded.status(load_settings().pgdata)
    if st.url is None:
        raise CliError("the embedded server is not running: `angela-queue db start`")
    out.print(st.url)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def demo(ctx: typer.Context) -> None:
    """Run the learning-workers demo (embedded PostgreSQL unless a DSN is set); --help for its
    options."""
    from angela_queue.demo.run import main as run_demo

    raise typer.Exit(run_demo(list(ctx.args)))
