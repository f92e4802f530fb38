"""The `angela-queue` command: parse → call the library → print. Errors are one line."""

from __future__ import annotations

import sys

import typer

from angela_queue import errors
from angela_queue.cli import (  # noqa: F401 - they register their commands
    core,
    health,
    monitor,
    priority,
    supervise,
    tasks,
)
from angela_queue.cli.common import CliError, app, err

__all__ = ["app", "main"]


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
