"""Real PostgreSQL for every test (DESIGN.md §9).

``ANGELA_QUEUE_TEST_DSN`` names a server to use (its role needs CREATEDB); otherwise one
embedded server is started for the session. A template database is migrated once and each
test gets a fresh clone of it (CREATE DATABASE … TEMPLATE, a few ms).
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> Iterator[str]:
    name = f"aq_tpl_{uuid.uuid4().hex[:10]}"
    with _admin(pg_server_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate.upgrade(make_conninfo(pg_server_dsn, dbname=name))
    yield name
    with _admin(pg_server_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"aq_t_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server_dsn) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    yield make_conninfo(pg_server_dsn, dbname=name)
    with _admin(pg_server_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def empty_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh database without the schema (for migration tests)."""
    name = f"aq_e_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server_dsn, dbname=name)
    with _admin(pg_server_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


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
