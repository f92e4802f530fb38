"""Migrations: one head, a clean round trip, and safe concurrent runs."""

from __future__ import annotations

import multiprocessing

import psycopg
from alembic.script import ScriptDirectory

from angela_queue import migrate


def test_single_head():
    script = ScriptDirectory.from_config(migrate._config())
    assert len(script.get_heads()) == 1
    assert script.get_current_head() == migrate.head_revision()


def test_upgrade_downgrade_upgrade_round_trip(empty_dsn):
    migrate.upgrade(empty_dsn)
    assert migrate.current(empty_dsn) == migrate.head_revision()
    migrate.downgrade(empty_dsn, "base")
    assert migrate.current(empty_dsn) is None
    with psycopg.connect(empty_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'angela_queue'"
            " AND table_name <> 'alembic_version'"
        ).fetchone()
    assert tables == (0,)
    migrate.upgrade(empty_dsn)
    assert migrate.current(empty_dsn) == migrate.head_revision()


def _upgrade(dsn: str) -> None:
    migrate.upgrade(dsn)


def test_concurrent_migrate_runs_are_serialised(empty_dsn):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_upgrade, args=(empty_dsn,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert migrate.current(empty_dsn) == migrate.head_revision()


def test_a_downgrade_restores_the_functions_each_migration_replaced(empty_dsn):
    """Migrations that replace a function must give back the previous one on the way down
    (0016 rewrites task_insert_many and task_notify_inserted)."""
    functions = "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p" \
        " JOIN pg_namespace n ON n.oid = p.pronamespace" \
        " WHERE n.nspname = 'angela_queue' ORDER BY 1"  # fmt: skip
    migrate.upgrade(empty_dsn, "0015")
    with psycopg.connect(empty_dsn) as conn:
        before = conn.execute(functions).fetchall()
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(functions).fetchall() != before
    migrate.downgrade(empty_dsn, "0015")
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(functions).fetchall() == before
