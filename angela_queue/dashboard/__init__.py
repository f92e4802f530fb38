"""The live web dashboard (`angela-queue dashboard`): a Starlette app on monitoring.py.

One hand-written page (static/, shipped in the package: no CDN, works offline) polls
``/api/snapshot`` every 1.5 s. Reads go through the same views as `status` and the metrics;
the two write actions (retry a failed task, requeue dropped ones) call the same store
methods as the `retry` and `requeue` commands.

Access: bound to loopback by default. With a token, every request needs it, as
``Authorization: Bearer T`` or the cookie set by opening ``/?token=T`` once. Writes also
need an ``X-Angela-Queue`` header, which a cross-site form cannot send, and on loopback the
Host header must name loopback (no DNS rebinding).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from angela_queue import errors, metrics, monitoring
from angela_queue.settings import Settings
from angela_queue.store import TaskStore

STATIC = Path(__file__).parent / "static"
COOKIE = "angela_queue_token"
WRITE_HEADER = "x-angela-queue"
SNAPSHOT_TTL_S = 1.0  # however many browsers poll, the database sees one read a second
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}


class Dashboard:
    """The routes' shared state: the pool, the settings and a short-lived snapshot cache."""

    def __init__(self, pool: ConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = metrics.registry_for(pool, settings)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def state(self) -> dict[str, Any]:
        """Everything the page shows, cached for SNAPSHOT_TTL_S."""
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < SNAPSHOT_TTL_S:
                return self._cached[1]
            with self.pool.connection() as conn:
                store = TaskStore(conn)
                snap = monitoring.snapshot(
                    store,
                    heartbeat_s=self.settings.heartbeat_s,
                    heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
                )
                data = snap.to_json()
                data["throughput"] = monitoring.throughput(store)
                data["failures"] = monitoring.recent_failures(store)
                data["dropped_tasks"] = monitoring.dropped_tasks(store)
            data["heartbeat_timeout_s"] = self.settings.heartbeat_timeout_s
            self._cached = (time.monotonic(), data)
            return data

    def requeue(self, status: str, queue: str | None, ids: list[int] | None) -> dict[str, Any]:
        with self.pool.connection() as conn, conn.transaction():
            rows = TaskStore(conn).task_requeue(status, queue, ids)
        with self._lock:
            self._cached = None  # the next poll shows the change
        return {
            "requeued": sum(int(r["requeued"]) for r in rows),
            "left_behind": sum(int(r["left_behind"]) for r in rows),
        }


def create_app(
    pool: ConnectionPool, settings: Settings, *, token: str | None, loopback: bool
) -> Starlette:
    """The ASGI app; the caller owns ``pool`` (closed when the app shuts down)."""
    dash = Dashboard(pool, settings)

    def index(request: Request) -> Response:
        if token and request.query_params.get("token"):
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                COOKIE, request.query_params["token"], httponly=True, samesite="strict"
            )
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def snapshot(request: Request) -> Response:
        return _answer(dash.state, headers={"Cache-Control": "no-store"})

    def retry(request: Request) -> Response:
        task_id = int(request.path_params["task_id"])
        return _answer(lambda: dash.requeue("failed", None, [task_id]))

    def requeue_dropped(request: Request) -> Response:
        return _answer(lambda: dash.requeue("dropped", request.path_params["queue"], None))

    def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(dash.registry), media_type=metrics.CONTENT_TYPE)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.close()

    routes = [
        Route("/", index),
        Route("/api/snapshot", snapshot),
        Route("/api/tasks/{task_id:int}/retry", retry, methods=["POST"]),
        Route("/api/queues/{queue:str}/requeue-dropped", requeue_dropped, methods=["POST"]),
        Route("/metrics", prometheus),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    guard = Middleware(BaseHTTPMiddleware, dispatch=_guard(token, loopback))
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)


def _guard(token: str | None, loopback: bool) -> Callable[[Request, RequestResponseEndpoint], Any]:
    async def dispatch(request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = request.headers.get("host", "").rsplit(":", 1)[0].lower()
        if loopback and host not in LOOPBACK_HOSTS:
            return PlainTextResponse("unexpected Host header", status_code=421)
        if token and request.url.path != "/healthz" and not _authorised(request, token):
            return PlainTextResponse(
                "angela-queue dashboard: open it with ?token=… (or send a Bearer token)",
                status_code=401,
            )
        if request.method != "GET" and WRITE_HEADER not in request.headers:
            return PlainTextResponse(f"writes need the {WRITE_HEADER} header", status_code=403)
        return await call_next(request)

    return dispatch


def _authorised(request: Request, token: str) -> bool:
    given = request.cookies.get(COOKIE, "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if request.url.path == "/" and request.query_params.get("token"):
        given = request.query_params["token"]
    return hmac.compare_digest(given.encode(), token.encode())


def _answer(read: Callable[[], dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    """JSON of ``read()``; a database that is down or refuses a write is one line, no trace."""
    try:
        return JSONResponse(read(), headers=headers)
    except (PoolTimeout, psycopg.OperationalError, errors.DatabaseError):
        return JSONResponse({"error": "database unreachable"}, status_code=503)
    except errors.AngelaQueueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; anything else (0.0.0.0 included) is exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(dsn: str, settings: Settings, *, host: str, port: int, token: str | None) -> None:
    """Run the dashboard with uvicorn until interrupted."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """Stop gracefully on SIGTERM/SIGINT and exit 0 (uvicorn would re-raise them)."""

            def handle(signum: int, frame: object) -> None:
                self.force_exit = self.should_exit and signum == signal.SIGINT
                self.should_exit = True

            old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, previous in old.items():
                    signal.signal(sig, previous)

    _check_port_free(host, port)
    pool = metrics.open_pool(dsn, settings)
    app = create_app(pool, settings, token=token, loopback=is_loopback(host))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    Server(config).run()


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise errors.ConfigurationError(
                f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
