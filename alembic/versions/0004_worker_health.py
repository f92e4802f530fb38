"""Worker health: the worker_stats view and an index for finding stale workers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The reaper looks for live workers whose heartbeat is older than the timeout every few
-- seconds, from every worker: dead rows accumulate, so the scan must skip them.
CREATE INDEX workers_heartbeat_idx ON angela_queue.workers (heartbeat_at)
    WHERE status <> 'dead';

-- One row per worker process (DESIGN.md §1). Column names are a public contract: the
-- README documents them, and `angela-queue status` reads this view. New columns are
-- only ever appended.
CREATE VIEW angela_queue.worker_stats AS
SELECT w.id,
       w.hostname,
       w.pid,
       w.queues,
       w.status,
       extract(epoch FROM now() - w.heartbeat_at)::double precision AS heartbeat_age_s,
       w.tasks_completed,
       w.tasks_failed,
       w.avg_processing_ms,
       w.current_task_id,
       w.last_active_at,
       w.started_at,
       w.kinds,
       w.concurrency,
       -- Rows still running under this worker: for a dead worker, what the reaper has
       -- yet to reclaim (read through tasks_running_idx, never a scan of all tasks).
       (SELECT count(*) FROM angela_queue.tasks t
         WHERE t.status = 'running' AND t.worker_id = w.id) AS tasks_running,
       w.stop_requested
  FROM angela_queue.workers w;
"""

DOWNGRADE = """
DROP VIEW IF EXISTS angela_queue.worker_stats;
DROP INDEX IF EXISTS angela_queue.workers_heartbeat_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
