-- Every runtime statement of angela-queue, one `-- name:` block each, grouped by entity.
-- Named psycopg parameters only; every object schema-qualified so that transactional
-- enqueue works on a caller's connection whatever its search_path.

-- name: database_now
-- The database's clock, the one every lease comparison uses; also a liveness probe.
SELECT now() AS now;

-- name: queue_count_ready
-- Ready pending tasks of some queues, counted only up to a cap: the adaptive poll needs
-- to know "more than 20", never the exact size of a big backlog.
SELECT count(*) AS n FROM (
    SELECT 1 FROM angela_queue.tasks
     WHERE status = 'pending' AND ready AND queue = ANY(%(queues)s::text[])
     LIMIT %(cap)s
) capped;

-- name: queue_get
SELECT name, max_size, overflow_policy, drop_below_priority, aging_rate, paused
  FROM angela_queue.queues WHERE name = %(name)s;

-- name: queue_listen
-- Wake-ups: the insert trigger, task_promote_due and the reapers notify this channel with
-- the queue's name as payload (store.NOTIFY_CHANNEL).
LISTEN angela_queue;

-- name: queue_list
SELECT name, max_size, overflow_policy, drop_below_priority, aging_rate, paused
  FROM angela_queue.queues ORDER BY name;

-- name: queue_upsert
-- Create a queue or change some of its settings (NULL keeps the current value).
INSERT INTO angela_queue.queues AS q (name, aging_rate, paused)
VALUES (%(name)s, coalesce(%(aging_rate)s::double precision, 0.3), coalesce(%(paused)s::boolean, false))
ON CONFLICT (name) DO UPDATE
   SET aging_rate = coalesce(%(aging_rate)s::double precision, q.aging_rate),
       paused = coalesce(%(paused)s::boolean, q.paused),
       updated_at = now()
RETURNING name, max_size, overflow_policy, drop_below_priority, aging_rate, paused;

-- name: status_queues
-- Per queue and tier: live counts, oldest wait, and the last hour's outcomes (the last hour
-- comes through tasks_finished_at_idx, never a scan of all finished rows).
WITH live AS (
    SELECT queue, tier,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'running') AS running,
           max(extract(epoch FROM now() - aging_from)) FILTER (WHERE status = 'pending' AND ready)
               AS oldest_wait_s
      FROM angela_queue.tasks
     WHERE status IN ('pending', 'running')
     GROUP BY queue, tier
), recent AS (
    SELECT queue, tier,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed
      FROM angela_queue.tasks
     WHERE finished_at > now() - interval '1 hour'
     GROUP BY queue, tier
)
SELECT coalesce(l.queue, r.queue) AS queue, coalesce(l.tier, r.tier) AS tier,
       coalesce(l.pending, 0) AS pending, coalesce(l.running, 0) AS running,
       l.oldest_wait_s, coalesce(r.succeeded, 0) AS succeeded_1h, coalesce(r.failed, 0) AS failed_1h
  FROM live l FULL JOIN recent r ON r.queue = l.queue AND r.tier = l.tier
 ORDER BY 1, array_position(ARRAY['critical', 'high', 'medium', 'low'], coalesce(l.tier, r.tier));

-- name: status_workers
-- Live workers, and the dead ones of the last hour, from the worker_stats view.
SELECT id, hostname, pid, queues, status, heartbeat_age_s, tasks_completed, tasks_failed,
       avg_processing_ms, current_task_id, last_active_at, started_at, tasks_running
  FROM angela_queue.worker_stats
 WHERE status <> 'dead' OR heartbeat_age_s < 3600
 ORDER BY id;

-- name: task_claim
-- Claim up to %(limit)s due tasks in effective-priority order. Each (queue, kind) pair is
-- read by an index scan of tasks_claim_idx, which returns rows already in sort_key order, so
-- the pending set is never sorted: only the few candidates are merged, by effective
-- priority at this instant (queues may age at different rates). SKIP LOCKED lets many
-- workers claim at once without waiting on each other.
WITH candidates AS (
    SELECT c.id,
           q.aging_rate * angela_queue.epoch_minutes(coalesce(%(now)s::timestamptz, now()))
               - c.sort_key AS effective_priority
      FROM angela_queue.queues q
     CROSS JOIN unnest(%(kinds)s::text[]) AS k(kind)
     CROSS JOIN LATERAL (
            SELECT t.id, t.sort_key
              FROM angela_queue.tasks t
             WHERE t.status = 'pending' AND t.ready AND t.queue = q.name AND t.kind = k.kind
             ORDER BY t.sort_key, t.id
             LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED
           ) c
     WHERE q.name = ANY(%(queues)s::text[]) AND NOT q.paused
       -- A worker already declared dead claims nothing: the reaper would take it back.
       AND NOT EXISTS (SELECT 1 FROM angela_queue.workers w
                        WHERE w.id = %(worker_id)s AND w.status = 'dead')
     ORDER BY effective_priority DESC, c.id
     LIMIT %(limit)s
)
UPDATE angela_queue.tasks t
   SET status = 'running',
       attempts = t.attempts + 1,
       worker_id = %(worker_id)s,
       started_at = coalesce(%(now)s::timestamptz, now())
  FROM candidates c
 WHERE t.id = c.id
RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier, t.attempts,
          t.max_attempts, t.enqueued_at, t.run_at, t.deadline_at, t.started_at, t.batch_key,
          t.dedupe_key, t.timeout_s, c.effective_priority, t.worker_id;

-- name: task_complete_many
-- Fenced: only rows still running under this worker and attempt change. A task that was
-- reclaimed meanwhile is left alone and missing from the result (a late result is a no-op).
UPDATE angela_queue.tasks t
   SET status = 'succeeded', finished_at = now(), result = r.result, last_error = NULL
  FROM unnest(%(ids)s::bigint[], %(attempts)s::smallint[], %(results)s::jsonb[])
       AS r(id, attempts, result)
 WHERE t.id = r.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
   AND t.attempts = r.attempts
RETURNING t.id;

-- name: task_fail_many
-- Fenced like task_complete_many. A row with a retry_at goes back to pending (keeping its
-- age, out of the claim index until due); a row without one is failed for good.
UPDATE angela_queue.tasks t
   SET status = CASE WHEN r.retry_at IS NULL THEN 'failed' ELSE 'pending' END,
       finished_at = CASE WHEN r.retry_at IS NULL THEN now() END,
       run_at = coalesce(r.retry_at, t.run_at),
       ready = coalesce(r.retry_at <= now(), false),
       last_error = r.error
  FROM unnest(%(ids)s::bigint[], %(attempts)s::smallint[], %(errors)s::text[],
              %(retry_ats)s::timestamptz[]) AS r(id, attempts, error, retry_at)
 WHERE t.id = r.id AND t.status = 'running' AND t.worker_id = %(worker_id)s
   AND t.attempts = r.attempts
RETURNING t.id, t.status;

-- name: task_get
SELECT id, queue, kind, payload, priority, boost, tier, status, attempts, max_attempts,
       enqueued_at, run_at, deadline_at, started_at, finished_at, worker_id, last_error,
       result, batch_key, dedupe_key, timeout_s
  FROM angela_queue.tasks WHERE id = %(id)s;

-- name: task_get_live_by_dedupe_key
SELECT id FROM angela_queue.tasks
 WHERE dedupe_key = %(dedupe_key)s AND status IN ('pending', 'running');

-- name: task_insert
-- NULLs take the database's defaults (the insert trigger fills them).
INSERT INTO angela_queue.tasks
       (queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
        batch_key, dedupe_key)
VALUES (%(queue)s, %(kind)s, %(payload)s, %(priority)s, %(run_at)s, %(enqueued_at)s,
        %(max_attempts)s, %(timeout_s)s, %(batch_key)s, %(dedupe_key)s)
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running')
DO NOTHING
RETURNING id;

-- name: task_insert_many_copy
COPY angela_queue.tasks
     (id, queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
      batch_key, dedupe_key)
FROM STDIN;

-- name: task_promote_due
-- Scheduled tasks whose run_at has come enter the claim index; the queues that got work
-- are notified so that idle workers start it now rather than at their next poll.
WITH due AS (
    SELECT id FROM angela_queue.tasks
     WHERE status = 'pending' AND NOT ready AND run_at <= now()
     ORDER BY run_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE angela_queue.tasks t SET ready = true FROM due WHERE t.id = due.id RETURNING t.queue
)
SELECT q.queue, pg_notify('angela_queue', q.queue)::text AS notified
  FROM (SELECT DISTINCT queue FROM promoted) q;

-- name: task_reclaim_orphaned
-- Tasks running under a worker that is dead, or has no row at all, go back to pending (the
-- attempt they used stays counted) or fail when it was their last. One statement: SKIP
-- LOCKED hands each row to one reaper only, and the UPDATE re-checks state, owner and
-- attempt, so a task completed or claimed again meanwhile is never touched (no stale
-- reclaim, no double reclaim). Requeued tasks are ready at once and their queue is
-- notified, so idle workers start them without waiting for a poll; PostgreSQL delivers
-- one notification per queue however many rows call pg_notify in the transaction.
WITH orphaned AS (
    SELECT t.id, t.worker_id, t.attempts
      FROM angela_queue.tasks t
      LEFT JOIN angela_queue.workers w ON w.id = t.worker_id
     WHERE t.status = 'running' AND (w.id IS NULL OR w.status = 'dead')
     ORDER BY t.id
     LIMIT %(limit)s
       FOR UPDATE OF t SKIP LOCKED
), reclaimed AS (
    UPDATE angela_queue.tasks t
       SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
           ready = true,
           finished_at = CASE WHEN t.attempts >= t.max_attempts
                              THEN coalesce(%(now)s::timestamptz, now()) END,
           last_error = format('Reclaimed: worker %%s was lost (no heartbeat) during attempt %%s/%%s',
                               coalesce(o.worker_id::text, '?'), t.attempts, t.max_attempts)
      FROM orphaned o
     WHERE t.id = o.id AND t.status = 'running'
       AND t.worker_id IS NOT DISTINCT FROM o.worker_id AND t.attempts = o.attempts
    RETURNING t.id, t.status, t.queue, o.worker_id
)
SELECT id, status, queue, worker_id,
       CASE WHEN status = 'pending' THEN pg_notify('angela_queue', queue)::text END AS notified
  FROM reclaimed;

-- name: task_reclaim_overdue
-- Tasks still running %(grace_s)s seconds past their timeout_s, whatever their worker's
-- heartbeat says: the worker is alive but wedged (a healthy one records the timeout
-- itself at timeout_s). Same guards and outcome as task_reclaim_orphaned; the wedged
-- worker's late result is then a no-op, because it no longer owns the attempt.
WITH overdue AS (
    SELECT t.id, t.worker_id, t.attempts
      FROM angela_queue.tasks t
     WHERE t.status = 'running'
       AND t.started_at < coalesce(%(now)s::timestamptz, now())
                          - make_interval(secs => t.timeout_s + %(grace_s)s)
     ORDER BY t.id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), reclaimed AS (
    UPDATE angela_queue.tasks t
       SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
           ready = true,
           finished_at = CASE WHEN t.attempts >= t.max_attempts
                              THEN coalesce(%(now)s::timestamptz, now()) END,
           last_error = format('Reclaimed: still running on worker %%s past timeout_s=%%s'
                               ' (wedged) during attempt %%s/%%s',
                               coalesce(o.worker_id::text, '?'), t.timeout_s, t.attempts,
                               t.max_attempts)
      FROM overdue o
     WHERE t.id = o.id AND t.status = 'running'
       AND t.worker_id IS NOT DISTINCT FROM o.worker_id AND t.attempts = o.attempts
    RETURNING t.id, t.status, t.queue, o.worker_id
)
SELECT id, status, queue, worker_id,
       CASE WHEN status = 'pending' THEN pg_notify('angela_queue', queue)::text END AS notified
  FROM reclaimed;

-- name: task_release_unknown
-- After a reconnect: tasks running under this worker that it does not know it runs (the
-- claim committed but its reply was lost with the connection) go back to pending with
-- that attempt un-counted, since no handler ever started them.
UPDATE angela_queue.tasks
   SET status = 'pending', ready = true, attempts = attempts - 1,
       last_error = 'Released: the reply to its claim was lost with the connection'
 WHERE status = 'running' AND worker_id = %(worker_id)s AND id <> ALL(%(known_ids)s::bigint[])
RETURNING id;

-- name: task_reserve_ids
-- Ids for a bulk COPY, so that enqueue_many can return them without a round trip per row.
SELECT nextval(pg_get_serial_sequence('angela_queue.tasks', 'id')) AS id
  FROM generate_series(1, %(n)s);

-- name: worker_heartbeat
-- Liveness plus the counters the worker accumulated in memory since the last beat, in one
-- statement. A worker already declared dead gets no row back and must stop.
UPDATE angela_queue.workers
   SET heartbeat_at = now(),
       status = %(status)s,
       current_task_id = %(current_task_id)s,
       tasks_completed = tasks_completed + %(completed)s,
       tasks_failed = tasks_failed + %(failed)s,
       avg_processing_ms = CASE
           WHEN %(completed)s + %(failed)s = 0 THEN avg_processing_ms
           ELSE (coalesce(avg_processing_ms, 0) * (tasks_completed + tasks_failed)
                 + %(processing_ms_sum)s::double precision)
                / (tasks_completed + tasks_failed + %(completed)s + %(failed)s) END,
       last_active_at = coalesce(%(last_active_at)s::timestamptz, last_active_at)
 WHERE id = %(id)s AND status <> 'dead'
RETURNING stop_requested;

-- name: worker_mark_dead
UPDATE angela_queue.workers
   SET status = 'dead', heartbeat_at = now(), current_task_id = NULL
 WHERE id = %(id)s;

-- name: worker_mark_dead_stale
-- Live workers silent for longer than the timeout become dead; the database's clock is
-- the only one compared, never a worker's. heartbeat_at is kept as the last sign of life.
-- Safe from many reapers at once: an UPDATE that waited for another's row lock re-checks
-- the row after that commit, finds it dead, and leaves it alone.
UPDATE angela_queue.workers
   SET status = 'dead', current_task_id = NULL
 WHERE status <> 'dead'
   AND heartbeat_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(timeout_s)s)
RETURNING id;

-- name: worker_register
INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status)
VALUES (%(hostname)s, %(pid)s, %(queues)s::text[], %(kinds)s::text[], %(concurrency)s, 'idle')
RETURNING id;
