"""Real PostgreSQL for every test (DESIGN.md §9).

``ANGELA_QUEUE_TEST_DSN`` names a server to use (its role needs CREATEDB); otherwise one
embedded server is started for the session. A template database is migrated once and each
test gets a fresh clone of it (CREATE DATABASE … TEMPLATE), made ahead by a thread while
the test before runs: a clone costs the server ~50 ms (it copies the catalogs).
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from angela_queue import migrate


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    dsn = os.environ.get("ANGELA_QUEUE_TEST_DSN")
    if dsn:
        yield dsn
        return
    from angela_queue.embedded import EphemeralServer

    server = EphemeralServer()
    server.tune_for_tests()
    try:
        yield server.dsn
    finally:
        server.stop()


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> Iterator[str]:
    name = f"aq_tpl_{uuid.uuid4().hex[:10]}"
    with _admin(pg_server_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate.upgrade(make_conninfo(pg_server_dsn, dbname=name))
    yield name
    with _admin(pg_server_dsn) as conn:
        _drop(conn, name)


class Clones:
    """Fresh clones of the template, made ``ahead`` of the tests by one thread."""

    def __init__(self, server_dsn: str, template: str, ahead: int = 2) -> None:
        self._server_dsn = server_dsn
        self._template = template
        self._ready: queue.Queue[str] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._make, name="test-db-clones", daemon=True)
        self._thread.start()

    def _make(self) -> None:
        try:
            with _admin(self._server_dsn) as conn:
                while not self._stop.is_set():
                    name = f"aq_t_{uuid.uuid4().hex[:12]}"
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(name), sql.Identifier(self._template)
                        )
                    )
                    while not self._stop.is_set():
                        try:
                            self._ready.put(name, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    else:
                        _drop(conn, name)
        except BaseException as exc:  # the test waiting for a clone raises it
            self._error = exc

    def take(self) -> str:
        while True:
            try:
                return self._ready.get(timeout=0.2)
            except queue.Empty:
                if self._error is not None:
                    raise RuntimeError(f"cannot clone the template: {self._error}") from None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with _admin(self._server_dsn) as conn:
            while True:
                try:
                    _drop(conn, self._ready.get_nowait())
                except queue.Empty:
                    break


@pytest.fixture(scope="session")
def clones(pg_server_dsn: str, template_db: str) -> Iterator[Clones]:
    made = Clones(pg_server_dsn, template_db)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def dsn(pg_server_dsn: str, clones: Clones) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = clones.take()
    yield make_conninfo(pg_server_dsn, dbname=name)
    with _admin(pg_server_dsn) as conn:
        _drop(conn, name)


@pytest.fixture
def empty_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh database without the schema (for migration tests)."""
    name = f"aq_e_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server_dsn, dbname=name)
    with _admin(pg_server_dsn) as conn:
        _drop(conn, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def pgbouncer(pg_server_dsn: str) -> Iterator[Any]:
    """A PgBouncer in transaction mode in front of the session's server (tests/pgbouncer.py).

    Tests marked ``pgbouncer`` use it; without Debian's pgbouncer they fail, saying so.
    """
    from tests.pgbouncer import PgBouncer, find_binary

    binary = find_binary()
    if binary is None:
        pytest.fail(
            "pgbouncer is not installed: `apt-get install -y pgbouncer` "
            "(the tests marked pgbouncer need it; `make test` deselects them)",
            pytrace=False,
        )
    bouncer = PgBouncer(binary, pg_server_dsn)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooled_dsn(dsn: str, pgbouncer: Any) -> str:
    """This test's fresh database, through PgBouncer in transaction mode."""
    return str(pgbouncer.dsn_for(dsn))
