"""Two gaps found by the hostile-input and privilege tests (issue 11).

- An infinite run_at or enqueued_at was stored: 'infinity' never runs, and '-infinity' is a
  poison row (the worker's driver cannot represent it, so every claim that picks it fails).
  Both are refused now. NOT VALID: rows already stored are not checked, so the migration
  cannot fail on an old table; every new row is.
- The cleaner deletes dead worker rows, which angela_queue_worker could not: each cleaning
  pass of a worker running under that role failed and rolled back.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE angela_queue.tasks
    ADD CONSTRAINT tasks_run_at_check CHECK (isfinite(run_at)) NOT VALID,
    ADD CONSTRAINT tasks_enqueued_at_check CHECK (isfinite(enqueued_at)) NOT VALID;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT DELETE ON angela_queue.workers TO angela_queue_worker;
    END IF;
END $$;
"""

DOWNGRADE = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        REVOKE DELETE ON angela_queue.workers FROM angela_queue_worker;
    END IF;
END $$;
ALTER TABLE angela_queue.tasks
    DROP CONSTRAINT IF EXISTS tasks_run_at_check,
    DROP CONSTRAINT IF EXISTS tasks_enqueued_at_check;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
