"""`angela-queue reap`: reclaim the tasks of dead and wedged workers."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from angela_queue.cli.common import (
    DsnOption,
    app,
    load_settings,
    out,
    resolve_dsn,
    setup_logging,
)
from angela_queue.watchdog import set_on_signals


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
    from angela_queue.reaper import Reaper, ReaperConfig

    setup_logging(log_level or ("WARNING" if once else "INFO"))
    settings = load_settings(dsn=dsn, heartbeat_timeout_s=heartbeat_timeout)
    reaper = Reaper(ReaperConfig.from_settings(settings, interval), resolve_dsn(settings))
    if once:
        try:
            out.print(f"reap: {reaper.run_once().summary()}", highlight=False, soft_wrap=True)
        finally:
            reaper.close()
        return
    stop = threading.Event()
    set_on_signals(stop, signal.SIGTERM, signal.SIGINT)
    logging.getLogger("angela_queue.reaper").info(
        "reaping every %g s; workers silent for %g s are dead",
        reaper.config.interval_s,
        reaper.config.heartbeat_timeout_s,
    )
    reaper.run_forever(stop)
