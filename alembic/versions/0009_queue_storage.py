"""The tasks table tuned for a queue: storage settings, and one index fewer on the hot path.

Every task row is written three times (insert, claim, finish) and then kept as history, so
the table churns like a queue and grows like a log.

- fillfactor 80: the claim's and the finish's new row versions mostly find room on their
  own page, which costs less WAL and lets page pruning reclaim the old versions without a
  vacuum. It applies to pages filled from now on; existing pages are not rewritten.
- autovacuum after 2 % of the rows changed (plus 1,000) instead of 20 %: dead versions at
  the head of the claim index are what a claim walks past, and with a long history a 20 %
  threshold would let millions of them pile up. The same for analyze (the planner's idea
  of how many tasks are pending) and for insert-only stretches (visibility map, freezing).
  A cost delay of 1 ms lets each vacuum finish quickly on a table this busy.
- tasks_first_started_at_idx is replaced: it took an entry at every claim and another at
  every finish, only to answer "which tasks first started in the last hour". The view
  first_starts_1h answers it from indexes the hot path maintains anyway: a task that first
  started in the last hour has either finished since (tasks_finished_at_idx), or is running
  (tasks_running_idx), or waits for a retry (tasks_retrying_idx, which only retries enter).
  tier_slo and queue_stats read it; their columns do not change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STORAGE = """
ALTER TABLE angela_queue.tasks SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
"""

STORAGE_DOWN = """
ALTER TABLE angela_queue.tasks RESET (
    fillfactor,
    autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor,
    autovacuum_analyze_scale_factor,
    autovacuum_vacuum_cost_delay
);
"""

FIRST_STARTS = """
CREATE INDEX tasks_retrying_idx ON angela_queue.tasks (first_started_at)
    WHERE status = 'pending' AND first_started_at IS NOT NULL;

-- Tasks that first started in the last hour, each once: finished ones (finished_at is set
-- and at or after the first start), running ones, and pending ones waiting for a retry.
CREATE VIEW angela_queue.first_starts_1h AS
SELECT queue, tier, first_started_at, deadline_at, aging_from
  FROM angela_queue.tasks
 WHERE finished_at > now() - interval '1 hour' AND status NOT IN ('pending', 'running')
   AND first_started_at > now() - interval '1 hour'
UNION ALL
SELECT queue, tier, first_started_at, deadline_at, aging_from
  FROM angela_queue.tasks
 WHERE status = 'running' AND first_started_at > now() - interval '1 hour'
UNION ALL
SELECT queue, tier, first_started_at, deadline_at, aging_from
  FROM angela_queue.tasks
 WHERE status = 'pending' AND first_started_at > now() - interval '1 hour';
"""

TIER_SLO = """
CREATE OR REPLACE VIEW angela_queue.tier_slo AS
WITH targets AS (
    SELECT q.name AS queue, t.tier, t.min_base,
           coalesce((q.target_waits ->> t.tier)::interval, t.target_wait) AS target_wait
      FROM angela_queue.queues q CROSS JOIN angela_queue.tiers t
), live AS (
    SELECT queue, tier, count(*) AS pending,
           count(*) FILTER (WHERE deadline_at < now()) AS pending_past_target,
           max(extract(epoch FROM now() - aging_from)) AS oldest_wait_s
      FROM angela_queue.tasks
     WHERE status = 'pending' AND ready
     GROUP BY queue, tier
), started AS (
    SELECT queue, tier, count(*) AS started_1h,
           count(*) FILTER (WHERE first_started_at <= deadline_at) AS met_1h
      FROM angela_queue.first_starts_1h
     GROUP BY queue, tier
)
SELECT g.queue, g.tier, extract(epoch FROM g.target_wait)::double precision AS target_wait_s,
       coalesce(l.pending, 0) AS pending,
       coalesce(l.pending_past_target, 0) AS pending_past_target,
       l.oldest_wait_s::double precision AS oldest_wait_s,
       coalesce(s.started_1h, 0) AS started_1h,
       coalesce(s.met_1h, 0) AS met_1h,
       CASE WHEN s.started_1h > 0 THEN s.met_1h::double precision / s.started_1h END
           AS met_ratio_1h
  FROM targets g
  LEFT JOIN live l ON l.queue = g.queue AND l.tier = g.tier
  LEFT JOIN started s ON s.queue = g.queue AND s.tier = g.tier
 ORDER BY g.queue, g.min_base DESC;
"""

QUEUE_STATS = r"""
CREATE OR REPLACE VIEW angela_queue.queue_stats AS
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
    -- First starts of the last hour (first_starts_1h). The wait counts
    -- from aging_from, the instant the deadline counts from (enqueued_at, or run_at for a
    -- task scheduled later), so it compares straight with the target wait.
    SELECT queue, tier, count(*) AS started_1h,
           count(*) FILTER (WHERE first_started_at > deadline_at) AS slo_breaches_1h,
           array_agg(date_part('epoch', first_started_at - aging_from)) AS wait_s
      FROM angela_queue.first_starts_1h
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

# Views read with their owner's rights; first_starts_1h is granted like the views built on
# it, for monitoring queries of its own (angela_queue.metrics reads it for the histograms).
GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_monitor') THEN
        GRANT SELECT ON angela_queue.first_starts_1h TO angela_queue_monitor;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'angela_queue_worker') THEN
        GRANT SELECT ON angela_queue.first_starts_1h TO angela_queue_worker;
    END IF;
END $$;
"""

DROP_OLD_INDEX = "DROP INDEX angela_queue.tasks_first_started_at_idx;"

UPGRADE = STORAGE + FIRST_STARTS + TIER_SLO + QUEUE_STATS + GRANTS + DROP_OLD_INDEX

# The views as in 0002 and 0005, then the index back.
OLD_TIER_SLO = """
CREATE OR REPLACE VIEW angela_queue.tier_slo AS
WITH targets AS (
    SELECT q.name AS queue, t.tier, t.min_base,
           coalesce((q.target_waits ->> t.tier)::interval, t.target_wait) AS target_wait
      FROM angela_queue.queues q CROSS JOIN angela_queue.tiers t
), live AS (
    SELECT queue, tier, count(*) AS pending,
           count(*) FILTER (WHERE deadline_at < now()) AS pending_past_target,
           max(extract(epoch FROM now() - aging_from)) AS oldest_wait_s
      FROM angela_queue.tasks
     WHERE status = 'pending' AND ready
     GROUP BY queue, tier
), started AS (
    SELECT queue, tier, count(*) AS started_1h,
           count(*) FILTER (WHERE first_started_at <= deadline_at) AS met_1h
      FROM angela_queue.tasks
     WHERE first_started_at > now() - interval '1 hour'
     GROUP BY queue, tier
)
SELECT g.queue, g.tier, extract(epoch FROM g.target_wait)::double precision AS target_wait_s,
       coalesce(l.pending, 0) AS pending,
       coalesce(l.pending_past_target, 0) AS pending_past_target,
       l.oldest_wait_s::double precision AS oldest_wait_s,
       coalesce(s.started_1h, 0) AS started_1h,
       coalesce(s.met_1h, 0) AS met_1h,
       CASE WHEN s.started_1h > 0 THEN s.met_1h::double precision / s.started_1h END
           AS met_ratio_1h
  FROM targets g
  LEFT JOIN live l ON l.queue = g.queue AND l.tier = g.tier
  LEFT JOIN started s ON s.queue = g.queue AND s.tier = g.tier
 ORDER BY g.queue, g.min_base DESC;
"""

OLD_QUEUE_STATS = r"""
CREATE OR REPLACE VIEW angela_queue.queue_stats AS
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

DOWNGRADE = (
    """
CREATE INDEX tasks_first_started_at_idx ON angela_queue.tasks (first_started_at)
    WHERE first_started_at IS NOT NULL;
"""
    + OLD_TIER_SLO
    + OLD_QUEUE_STATS
    + """
DROP VIEW angela_queue.first_starts_1h;
DROP INDEX angela_queue.tasks_retrying_idx;
"""
    + STORAGE_DOWN
)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
