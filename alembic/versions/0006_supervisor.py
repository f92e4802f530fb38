"""Supervisor decisions, kept for `angela-queue status` and for operators.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE angela_queue.supervisor_decisions (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    hostname  text NOT NULL,
    pending   bigint NOT NULL,
    workers   integer NOT NULL,
    target    integer NOT NULL,
    action    text NOT NULL,
    reason    text NOT NULL
);
CREATE INDEX supervisor_decisions_at_idx ON angela_queue.supervisor_decisions (at);
"""

DOWNGRADE = "DROP TABLE IF EXISTS angela_queue.supervisor_decisions;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
