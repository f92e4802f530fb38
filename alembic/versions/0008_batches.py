"""Batches: an index to claim a batch's mates, and per-worker batch counters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
-- Low-tier due tasks by batch key: a batch handler claims a task's mates from here. Only
-- low-tier inserts maintain it (the only tier that is batched and waits).
CREATE INDEX tasks_batch_idx ON angela_queue.tasks (queue, kind, batch_key, sort_key, id)
    WHERE status = 'pending' AND ready AND tier = 'low';

ALTER TABLE angela_queue.workers
    ADD COLUMN batches_run bigint NOT NULL DEFAULT 0,
    ADD COLUMN batch_tasks bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN angela_queue.workers.batch_tasks IS
    'tasks run in batches; batch_tasks / batches_run is the average batch size';

-- worker_stats as in 0004, with the batch figures appended (columns are only ever added).
CREATE OR REPLACE VIEW angela_queue.worker_stats AS
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
       (SELECT count(*) FROM angela_queue.tasks t
         WHERE t.status = 'running' AND t.worker_id = w.id) AS tasks_running,
       w.stop_requested,
       w.batches_run,
       CASE WHEN w.batches_run > 0
            THEN w.batch_tasks::double precision / w.batches_run END AS avg_batch_size
  FROM angela_queue.workers w;
"""

DOWNGRADE = """
DROP VIEW angela_queue.worker_stats;
CREATE VIEW angela_queue.worker_stats AS
SELECT w.id, w.hostname, w.pid, w.queues, w.status,
       extract(epoch FROM now() - w.heartbeat_at)::double precision AS heartbeat_age_s,
       w.tasks_completed, w.tasks_failed, w.avg_processing_ms, w.current_task_id,
       w.last_active_at, w.started_at, w.kinds, w.concurrency,
       (SELECT count(*) FROM angela_queue.tasks t
         WHERE t.status = 'running' AND t.worker_id = w.id) AS tasks_running,
       w.stop_requested
  FROM angela_queue.workers w;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_monitor') THEN
        GRANT SELECT ON angela_queue.worker_stats TO angela_queue_monitor;
    END IF;
END $$;
ALTER TABLE angela_queue.workers DROP COLUMN IF EXISTS batch_tasks,
                                 DROP COLUMN IF EXISTS batches_run;
DROP INDEX IF EXISTS angela_queue.tasks_batch_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
