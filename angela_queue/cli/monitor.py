"""Watching the queue: the `status` rendering, `metrics` and `dashboard` commands."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from angela_queue import monitoring
from angela_queue.cli.common import CliError, DsnOption, app, load_settings, out, resolve_dsn
from angela_queue.client import connect
from angela_queue.settings import Settings
from angela_queue.store import TaskStore

TOKEN_ENV = "ANGELA_QUEUE_DASHBOARD_TOKEN"


def show_status(
    settings: Settings, dsn: str, *, as_json: bool, watch: float | None, show_all: bool
) -> None:
    """Print the snapshot once, or refresh it in place every ``watch`` seconds."""
    with connect(dsn, autocommit=True) as conn:
        store = TaskStore(conn)

        def read() -> monitoring.Snapshot:
            snap = monitoring.snapshot(
                store,
                heartbeat_s=settings.heartbeat_s,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
            )
            return dataclasses.replace(snap, unserved=monitoring.unserved_kinds(store))

        if as_json:
            while True:
                data = read().to_json(include_idle=show_all)
                if watch is None:
                    out.print_json(json.dumps(data))
                    return
                print(json.dumps(data), flush=True)  # JSON Lines: one snapshot per line
                time.sleep(watch)
        if watch is None or not out.is_terminal:
            while True:
                out.print(render(read(), show_all))
                if watch is None:
                    return
                time.sleep(watch)
        with Live(render(read(), show_all), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(render(read(), show_all), refresh=True)


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(snap: monitoring.Snapshot, show_all: bool = False) -> RenderableType:
    """The status tables (the same rows `status --json` prints)."""
    queues = Table(title=f"queues × tiers at {snap.at:%H:%M:%S} (seconds; 1h = last hour)")
    for col in (
        "queue",
        "tier",
        "pending",
        "running",
        "oldest wait / target",
        "past target",
        "done 1h",
        "failed 1h",
        "dropped 1h",
        "wait p50",
        "wait p95",
        "SLO breaches 1h",
    ):
        queues.add_column(col, justify="left" if col in ("queue", "tier") else "right")
    for q in snap.queues if show_all else snap.active_queues():
        late = q.oldest_pending_age_s is not None and q.oldest_pending_age_s > q.target_wait_s
        wait = Text(
            f"{_s(q.oldest_pending_age_s)} / {q.target_wait_s:g}", style="red" if late else ""
        )
        queues.add_row(
            q.queue,
            q.tier,
            str(q.pending),
            str(q.running),
            wait,
            str(q.pending_past_target),
            str(q.done_1h),
            str(q.failed_1h),
            str(q.dropped_1h),
            _s(q.wait_p50_s, 2),
            _s(q.wait_p95_s, 2),
            str(q.slo_breaches_1h),
        )
    workers = Table(title="workers")
    for col in ("id", "host", "pid", "status", "health", "heartbeat s", "done", "failed"):
        workers.add_column(col)
    for col in ("avg ms", "running", "avg batch", "task"):
        workers.add_column(col)
    for w in snap.workers:
        workers.add_row(
            str(w.id),
            w.hostname,
            str(w.pid),
            w.status,
            Text(w.health, style="" if w.health == "ok" else "yellow"),
            _s(w.heartbeat_age_s),
            str(w.tasks_completed),
            str(w.tasks_failed),
            _s(w.avg_processing_ms),
            str(w.tasks_running),
            _s(w.avg_batch_size),
            str(w.current_task_id or "-"),
        )
    parts: list[RenderableType] = [queues, workers]
    if snap.unserved:
        parts.append(Text("pending tasks no live worker serves (no handler for the kind here):"))
    for u in snap.unserved or []:
        parts.append(
            Text(
                f"  {u['queue']} {u['kind']}: {u['pending']} pending, "
                f"oldest {_s(u['oldest_pending_age_s'])} s",
                style="yellow",
            )
        )
    if snap.decisions:
        parts.append(Text("recent supervisor decisions:"))
    for d in snap.decisions:
        parts.append(
            Text(
                f"  {d['at']:%Y-%m-%d %H:%M:%S} {d['hostname']}: pending={d['pending']} "
                f"workers={d['workers']} target={d['target']} {d['action']} ({d['reason']})"
            )
        )
    return Group(*parts)


@app.command()
def metrics(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve /metrics on.")] = 9464,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    dsn: DsnOption = None,
) -> None:
    """Serve Prometheus metrics, read from the database at every scrape."""
    from angela_queue.metrics import serve

    settings = load_settings(dsn=dsn)
    target = resolve_dsn(settings)
    connect(target, connect_timeout=10).close()
    out.print(f"serving Prometheus metrics on http://{_url_host(host)}:{port}/metrics")
    serve(target, settings, host=host, port=port)


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    token: Annotated[
        str | None,
        typer.Option(help=f"Access token (or {TOKEN_ENV}); required off loopback."),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """A live web dashboard: throughput, waits against targets, workers, failures, drops."""
    from angela_queue.dashboard import is_loopback, serve

    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise CliError(f"--host {host} is not loopback: give --token (or set {TOKEN_ENV})")
    if token is not None and len(token) < 8:
        raise CliError("--token must be at least 8 characters")
    settings = load_settings(dsn=dsn)
    target = resolve_dsn(settings)
    connect(target, connect_timeout=10).close()
    url = f"http://{_url_host(host)}:{port}/"
    out.print(f"dashboard on {url}" + (" (open it with ?token=…)" if token else ""))
    serve(target, settings, host=host, port=port, token=token)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
