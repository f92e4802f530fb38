"""Alembic environment: runs the raw-SQL migrations on the connection migrate.py hands over."""

from __future__ import annotations

from sqlalchemy import create_engine, pool

from alembic import context

config = context.config


def run_migrations_online() -> None:
    """Apply migrations; the version table lives in our own schema, not in public."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use `angela-queue migrate`")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)


def _run(connection: object) -> None:
    connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS angela_queue")  # type: ignore[attr-defined]
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        version_table="alembic_version",
        version_table_schema="angela_queue",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
run_migrations_online()
