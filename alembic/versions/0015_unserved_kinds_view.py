"""The view unserved_kinds: due pending tasks that no live worker serves (DESIGN.md §4).

A kind no running worker serves stays pending, as designed (an unknown kind, a typo, a
handler not deployed yet), and the monitoring views name it. `angela-queue status` read
the tables for this, which the monitor role may not; a view reads them as its owner.

It reads one index probe per distinct (queue, kind) of due pending tasks (a skip scan of
tasks_claim_idx, whose predicate is the due pending rows), then counts only the groups no
live worker serves: a large backlog of served kinds costs nothing but its distinct pairs.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE VIEW angela_queue.unserved_kinds AS
WITH RECURSIVE pairs (queue, kind) AS (
    (SELECT t.queue, t.kind FROM angela_queue.tasks t
      WHERE t.status = 'pending' AND t.ready
      ORDER BY t.queue, t.kind LIMIT 1)
    UNION ALL
    SELECT n.queue, n.kind
      FROM pairs p
     CROSS JOIN LATERAL (
            SELECT t.queue, t.kind FROM angela_queue.tasks t
             WHERE t.status = 'pending' AND t.ready AND (t.queue, t.kind) > (p.queue, p.kind)
             ORDER BY t.queue, t.kind LIMIT 1) n
)
SELECT p.queue, p.kind, c.pending, c.oldest_pending_age_s
  FROM pairs p
 CROSS JOIN LATERAL (
        SELECT count(*) AS pending,
               date_part('epoch', now() - min(t.aging_from)) AS oldest_pending_age_s
          FROM angela_queue.tasks t
         WHERE t.status = 'pending' AND t.ready AND t.queue = p.queue AND t.kind = p.kind) c
 WHERE NOT EXISTS (SELECT 1 FROM angela_queue.workers w
                    WHERE w.status <> 'dead' AND p.queue = ANY (w.queues)
                      AND p.kind = ANY (w.kinds));
COMMENT ON VIEW angela_queue.unserved_kinds IS
    'due pending tasks no live worker serves, by queue and kind: they wait until one does';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_monitor') THEN
        GRANT SELECT ON angela_queue.unserved_kinds TO angela_queue_monitor;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT SELECT ON angela_queue.unserved_kinds TO angela_queue_worker;
    END IF;
END $$;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS angela_queue.unserved_kinds;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
