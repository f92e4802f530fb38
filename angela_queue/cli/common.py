"""What every CLI command shares: the Typer apps, consoles, settings and DSN resolution."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from angela_queue import embedded
from angela_queue.client import App, connect
from angela_queue.settings import Settings

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

# Wide enough for the status tables when piped (rich assumes 80 columns off a terminal).
out = Console(width=None if sys.stdout.isatty() else 160)
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


def load_settings(**overrides: Any) -> Settings:
    return Settings.load(overrides)


def resolve_dsn(settings: Settings) -> str:
    return settings.dsn or embedded.start(settings.pgdata)


def load_app(spec: str, settings: Settings) -> App:
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
        obj.use_dsn(settings.dsn)  # --dsn given on the command line
    return obj


def check_reachable(dsn: str) -> None:
    connect(dsn, connect_timeout=10).close()


# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and the event's own fields
    (``extra={"event": "task_failed", "task_id": 42}``), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Logs on stderr: one readable line per event (text), or one JSON object (json)."""
    name = level.upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    if log_format not in ("text", "json"):
        raise CliError(f"--log-format must be text or json, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=name, handlers=[handler])
