"""Observability: the queue_stats and worker_stats views and the angela_queue_monitor role.

The views are the one source of truth behind `angela-queue status`, the Prometheus metrics
and the dashboard. Their column names are a public contract (README, "Monitoring"): new
columns are only ever appended. Every figure comes from a partial index on live rows or from
an index range on a time column (the last hour), never from a scan of all finished rows.

worker_stats comes from migration 0004 (worker health); this one lets the monitor read it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MONITOR_ROLE = "angela_queue_monitor"

QUEUE_STATS = r"""
CREATE VIEW angela_queue.queue_stats AS
WITH targets AS (
    SELECT q.name AS queue, t.tier, t.min_base,
           coalesce((q.target_waits ->> t.tier)::interval, t.target_wait) AS target_wait
      FROM angela_queue.queues q CROSS JOIN angela_queue.tiers t
), due AS (
    -- Each live CTE's WHERE is exactly one partial index's predicate (tasks_claim_idx,
    -- tasks_scheduled_idx, tasks_running_idx, tasks_dropped_tier_idx): only live rows are read.
    SELECT queue, tier, count(*) AS pending,
           count(*) FILTER (WHERE deadline_at < now()) AS pending_past_target,
           date_part('epoch', now() - min(aging_from)) AS oldest_pending_age_s,
           count(*) FILTER (WHERE attempts > 0) AS retrying,
           count(*) FILTER (WHERE last_error LIKE 'Reclaimed%') AS reclaimed
      FROM angela_queue.tasks
     WHERE status = 'pending' AND ready
     GROUP BY queue, tier
), scheduled AS (
    SELECT queue, tier, count(*) AS scheduled,
           count(*) FILTER (WHERE attempts > 0) AS retrying,
           count(*) FILTER (WHERE last_error LIKE 'Reclaimed%') AS reclaimed
      FROM angela_queue.tasks
     WHERE status = 'pending' AND NOT ready
     GROUP BY queue, tier
), running AS (
    SELECT queue, tier, count(*) AS running,
           count(*) FILTER (WHERE last_error LIKE 'Reclaimed%') AS reclaimed
      FROM angela_queue.tasks
     WHERE status = 'running'
     GROUP BY queue, tier
), held AS (
    SELECT queue, tier, count(*) AS dropped
      FROM angela_queue.tasks
     WHERE status = 'dropped'
     GROUP BY queue, tier
), finished AS (
    -- The last hour through tasks_finished_at_idx: the cost follows the last hour's volume,
    -- not the size of the table. Durations are collected per group by a hash aggregate and
    -- sorted per group below (cheaper than sorting every row by queue and tier first).
    -- Processing time is the last attempt's.
    SELECT queue, tier,
           count(*) FILTER (WHERE status = 'succeeded') AS done_1h,
           count(*) FILTER (WHERE status = 'failed') AS failed_1h,
           count(*) FILTER (WHERE status = 'dropped') AS dropped_1h,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled_1h,
           count(*) FILTER (WHERE status IN ('succeeded', 'failed') AND attempts > 1)
               AS retried_1h,
           array_agg(date_part('epoch', finished_at - started_at))
               FILTER (WHERE status IN ('succeeded', 'failed')) AS processing_s
      FROM angela_queue.tasks
     WHERE finished_at > now() - interval '1 hour'
     GROUP BY queue, tier
), started AS (
    -- First starts of the last hour through tasks_first_started_at_idx. The wait counts
    -- from aging_from, the instant the deadline counts from (enqueued_at, or run_at for a
    -- task scheduled later), so it compares straight with the target wait.
    SELECT queue, tier, count(*) AS started_1h,
           count(*) FILTER (WHERE first_started_at > deadline_at) AS slo_breaches_1h,
           array_agg(date_part('epoch', first_started_at - aging_from)) AS wait_s
      FROM angela_queue.tasks
     WHERE first_started_at > now() - interval '1 hour'
     GROUP BY queue, tier
)
SELECT g.queue,
       g.tier,
       date_part('epoch', g.target_wait) AS target_wait_s,
       coalesce(d.pending, 0)::bigint AS pending,
       coalesce(s.scheduled, 0)::bigint AS scheduled,
       coalesce(r.running, 0)::bigint AS running,
       d.oldest_pending_age_s,
       coalesce(d.pending_past_target, 0)::bigint AS pending_past_target,
       coalesce(f.done_1h, 0)::bigint AS done_1h,
       coalesce(f.failed_1h, 0)::bigint AS failed_1h,
       coalesce(f.dropped_1h, 0)::bigint AS dropped_1h,
       coalesce(f.cancelled_1h, 0)::bigint AS cancelled_1h,
       coalesce(st.started_1h, 0)::bigint AS started_1h,
       wp.p[1] AS wait_p50_s,
       wp.p[2] AS wait_p95_s,
       pp.p[1] AS processing_p50_s,
       pp.p[2] AS processing_p95_s,
       coalesce(st.slo_breaches_1h, 0)::bigint AS slo_breaches_1h,
       coalesce(h.dropped, 0)::bigint AS dropped,
       (coalesce(d.retrying, 0) + coalesce(s.retrying, 0))::bigint AS retrying,
       coalesce(f.retried_1h, 0)::bigint AS retried_1h,
       (coalesce(d.reclaimed, 0) + coalesce(s.reclaimed, 0) + coalesce(r.reclaimed, 0))::bigint
           AS reclaimed
  FROM targets g
  LEFT JOIN due d ON d.queue = g.queue AND d.tier = g.tier
  LEFT JOIN scheduled s ON s.queue = g.queue AND s.tier = g.tier
  LEFT JOIN running r ON r.queue = g.queue AND r.tier = g.tier
  LEFT JOIN held h ON h.queue = g.queue AND h.tier = g.tier
  LEFT JOIN finished f ON f.queue = g.queue AND f.tier = g.tier
  LEFT JOIN started st ON st.queue = g.queue AND st.tier = g.tier
  -- Interpolated percentiles (percentile_cont), one sort of each group's durations.
  LEFT JOIN LATERAL (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY v) AS p
                       FROM unnest(st.wait_s) v) wp ON true
  LEFT JOIN LATERAL (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY v) AS p
                       FROM unnest(f.processing_s) v) pp ON true
 ORDER BY g.queue, g.min_base DESC;
"""

# Roles are cluster-wide: another database of the cluster (or a concurrent migration) may
# have created it already. A migrating user without CREATEROLE gets a warning, not a failure.
MONITOR = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR_ROLE}') THEN
        BEGIN
            CREATE ROLE {MONITOR_ROLE} NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'role {MONITOR_ROLE} not created (needs CREATEROLE); '
                              'create it and re-grant as in migration 0005';
                RETURN;
        END;
    END IF;
    GRANT USAGE ON SCHEMA angela_queue TO {MONITOR_ROLE};
    GRANT SELECT ON angela_queue.queue_stats, angela_queue.worker_stats,
                    angela_queue.tier_slo TO {MONITOR_ROLE};
END $$;
"""

# The dashboard lists recent failures newest first: only failed rows enter this index, so it
# stays small however many tasks succeed. Both indexes take only rows in rare states.
INDEXES = """
CREATE INDEX tasks_failed_idx ON angela_queue.tasks (finished_at) WHERE status = 'failed';
-- Dropped tasks per queue and tier by an index-only scan: they can pile up in an overload.
CREATE INDEX tasks_dropped_tier_idx ON angela_queue.tasks (queue, tier) WHERE status = 'dropped';
-- Never analysed by autovacuum (too few changes), these tiny tables would keep the planner's
-- default estimate of a thousand rows each, and the views' plans would then look costly
-- enough for JIT compilation, which alone takes longer than the whole query.
ANALYZE angela_queue.queues;
ANALYZE angela_queue.tiers;
"""

UPGRADE = INDEXES + QUEUE_STATS + MONITOR

# The role stays (other databases of the cluster may use it); only its grants here go.
DOWNGRADE = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{MONITOR_ROLE}') THEN
        REVOKE ALL ON angela_queue.queue_stats, angela_queue.worker_stats,
                      angela_queue.tier_slo FROM {MONITOR_ROLE};
        REVOKE USAGE ON SCHEMA angela_queue FROM {MONITOR_ROLE};
    END IF;
END $$;
DROP VIEW IF EXISTS angela_queue.queue_stats;
DROP INDEX IF EXISTS angela_queue.tasks_dropped_tier_idx;
DROP INDEX IF EXISTS angela_queue.tasks_failed_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
