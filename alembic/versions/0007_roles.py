"""Least-privilege roles for producers and workers (DESIGN.md §1 "Roles").

Both are NOLOGIN group roles: an operator grants them to login roles
(`GRANT angela_queue_producer TO billing_service`). Roles belong to the whole cluster, so
they are created only if missing and never dropped by a downgrade (other databases may use
them); a downgrade revokes what this database granted.

- angela_queue_producer: INSERT the columns a producer may set (never status, attempts,
  worker_id, result …), SELECT the columns that describe a task's progress (not payloads,
  results or errors, which may belong to other producers), and read the configuration the
  insert trigger consults (queues, rules, tiers).
- angela_queue_worker: everything a worker, reaper, cleaner and supervisor do — claim,
  complete, reclaim and prune tasks, its workers row, supervisor decisions — and, as a
  producer, follow-up tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PRODUCER_INSERT = (
    "queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s, "
    "batch_key, dedupe_key"
)
PRODUCER_SELECT = (
    "id, queue, kind, priority, boost, tier, status, enqueued_at, run_at, deadline_at, "
    "attempts, max_attempts, started_at, finished_at, batch_key, dedupe_key, ready"
)

UPGRADE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_producer') THEN
        CREATE ROLE angela_queue_producer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        CREATE ROLE angela_queue_worker NOLOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA angela_queue TO angela_queue_producer, angela_queue_worker;

-- Producers: the columns they may set (the insert trigger fills and checks the rest) …
GRANT INSERT ({PRODUCER_INSERT}, id) ON angela_queue.tasks TO angela_queue_producer;
GRANT SELECT ({PRODUCER_SELECT}) ON angela_queue.tasks TO angela_queue_producer;
-- … ids reserved for a bulk COPY, and the configuration the insert trigger reads.
GRANT USAGE ON SEQUENCE angela_queue.tasks_id_seq TO angela_queue_producer;
GRANT SELECT ON angela_queue.queues, angela_queue.boost_rules, angela_queue.rule_vars,
                angela_queue.tiers TO angela_queue_producer;

-- Workers produce follow-up tasks too.
GRANT angela_queue_producer TO angela_queue_worker;
GRANT SELECT, UPDATE, DELETE ON angela_queue.tasks TO angela_queue_worker;
GRANT SELECT, INSERT, UPDATE ON angela_queue.workers TO angela_queue_worker;
GRANT USAGE ON SEQUENCE angela_queue.workers_id_seq TO angela_queue_worker;
GRANT SELECT, INSERT, DELETE ON angela_queue.supervisor_decisions TO angela_queue_worker;
GRANT USAGE ON SEQUENCE angela_queue.supervisor_decisions_id_seq TO angela_queue_worker;
GRANT SELECT ON angela_queue.tier_slo TO angela_queue_worker;
"""

DOWNGRADE = """
REVOKE ALL ON ALL TABLES IN SCHEMA angela_queue FROM angela_queue_producer, angela_queue_worker;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA angela_queue
    FROM angela_queue_producer, angela_queue_worker;
REVOKE USAGE ON SCHEMA angela_queue FROM angela_queue_producer, angela_queue_worker;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
