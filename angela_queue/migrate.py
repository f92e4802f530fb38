"""Programmatic Alembic: the only way the schema changes, from the repo or an installed wheel."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool

from alembic import command
from angela_queue import errors

# Serialises concurrent `migrate` runs (several workers starting at once).
_MIGRATE_LOCK_KEY = 0x616E67656C61  # "angela"


def alembic_dir() -> Path:
    """The migrations folder: shipped in the wheel, or the repo's top-level alembic/."""
    shipped = Path(__file__).parent / "_alembic"
    if (shipped / "env.py").exists():
        return shipped
    repo = Path(__file__).resolve().parent.parent / "alembic"
    if (repo / "env.py").exists():
        return repo
    raise errors.SchemaError("the alembic migrations are missing from this installation")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _engine(dsn: str):  # type: ignore[no-untyped-def]
    return create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=pool.NullPool
    )


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; safe to run from several processes at once."""
    with _engine(dsn).connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATE_LOCK_KEY})")
        conn.commit()
        try:
            _run(conn, lambda cfg: command.upgrade(cfg, revision))
        finally:
            conn.rollback()  # after a failed migration; the session lock survives it
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATE_LOCK_KEY})")
            conn.commit()


def downgrade(dsn: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` removes everything)."""
    with _engine(dsn).connect() as conn:
        _run(conn, lambda cfg: command.downgrade(cfg, revision))


def current(dsn: str) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with _engine(dsn).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table_schema": "angela_queue"})
        return ctx.get_current_revision()


def _run(conn: Connection, action) -> None:  # type: ignore[no-untyped-def]
    cfg = _config()
    cfg.attributes["connection"] = conn
    action(cfg)
    conn.commit()
