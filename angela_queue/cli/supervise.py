"""`angela-queue supervise`: scale this host's workers, long-running or once from cron."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from angela_queue.cli.common import (
    CliError,
    DsnOption,
    app,
    load_app,
    load_settings,
    out,
    resolve_dsn,
    setup_logging,
)
from angela_queue.settings import PROFILES
from angela_queue.supervisor import Supervisor, SupervisorConfig, run_forever
from angela_queue.watchdog import set_on_signals


@app.command()
def supervise(
    app_spec: Annotated[str, typer.Option("--app", help="Handlers: MODULE:ATTR of an App.")],
    once: Annotated[bool, typer.Option("--once", help="One decision, then exit (cron).")] = False,
    profile: Annotated[str | None, typer.Option(help="low, standard (default) or high.")] = None,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue to serve (repeatable).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Slots per worker.")
    ] = None,
    min_workers: Annotated[int | None, typer.Option(min=1, help="Override the profile.")] = None,
    max_workers: Annotated[int | None, typer.Option(min=1, help="Override the profile.")] = None,
    check_interval: Annotated[
        float | None, typer.Option(help="Seconds between checks (long-running).")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: ANGELA_QUEUE_LOG_LEVEL)."),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Keep this host's worker processes between min and max, following the backlog."""
    if profile is not None and profile not in PROFILES:
        raise CliError(f"--profile must be one of {', '.join(PROFILES)}")
    settings = load_settings(
        dsn=dsn,
        profile=profile,
        min_workers=min_workers,
        max_workers=max_workers,
        check_interval_s=check_interval,
    )
    setup_logging(log_level or settings.log_level)
    load_app(app_spec, settings)  # fail here, not in every worker it would start
    config = SupervisorConfig(
        app_spec=app_spec,
        queues=tuple(queue) if queue else settings.queues,
        settings=settings,
        concurrency=concurrency,
    )
    supervisor = Supervisor(config, resolve_dsn(settings))
    if once:
        result = supervisor.run_once()
        if not result.acted:
            out.print("another supervisor is acting on this host; nothing done")
        elif result.decision is not None:
            out.print(f"{result.decision.action}: {result.decision.reason}")
        return
    stop = threading.Event()
    set_on_signals(stop, signal.SIGTERM, signal.SIGINT)
    try:
        run_forever(supervisor, settings.check_interval_s, stop)
    finally:
        supervisor.stop_children(settings.shutdown_grace_s)
