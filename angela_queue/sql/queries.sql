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

-- name: queue_arm
-- A worker about to sleep: the next insert into the queue notifies (migration 0012). Run
-- on an autocommit connection: one queue, one short transaction.
SELECT angela_queue.queue_arm(%(queue)s);

-- name: queue_offer
-- A worker about to sleep: arm its queues and leave an offer of one slot, which the next
-- producer's commit fills (migration 0017): 'offered', 'due' (claim instead), 'busy' or
-- 'stopping' (arm and claim, as without push).
SELECT angela_queue.queue_offer(%(worker_id)s, %(offer_id)s, %(queues)s::text[],
                                %(kinds)s::text[]) AS state;

-- name: offer_withdraw
-- The worker's offer, if no producer filled it yet; a filled one's push is on its way. An
-- offer being filled is locked by that producer until it commits, so this waits for it.
DELETE FROM angela_queue.worker_offers WHERE worker_id = %(worker_id)s RETURNING offer_id;

-- name: worker_hold_listener_lock
-- The listener session holds this lock as long as it lives: a producer that can take it
-- shared knows the worker's pushes would be lost, and fills no offer of it (0017).
SELECT pg_try_advisory_lock(1095827716, (%(worker_id)s::bigint %% 2147483648)::integer)
       AS locked;

-- name: queue_get
SELECT name, max_size, overflow_policy, drop_below_priority, aging_rate, paused, target_waits
  FROM angela_queue.queues WHERE name = %(name)s;

-- name: queue_listen
-- Wake-ups: the insert trigger, task_promote_due and the reapers notify this channel with
-- the queue's name as payload (store.NOTIFY_CHANNEL).
LISTEN angela_queue;

-- name: queue_list
SELECT name, max_size, overflow_policy, drop_below_priority, aging_rate, paused, target_waits
  FROM angela_queue.queues ORDER BY name;

-- name: queue_set_bound
-- The bound of a queue (DESIGN.md §3); NULL keeps a value, unbounded clears max_size.
UPDATE angela_queue.queues
   SET max_size = CASE WHEN %(unbounded)s THEN NULL
                       ELSE coalesce(%(max_size)s::integer, max_size) END,
       overflow_policy = coalesce(%(overflow_policy)s::text, overflow_policy),
       drop_below_priority = coalesce(%(drop_below_priority)s::smallint, drop_below_priority),
       updated_at = now()
 WHERE name = %(name)s
RETURNING name;

-- name: queue_upsert
-- Create a queue or change some of its settings (NULL keeps the current value).
INSERT INTO angela_queue.queues AS q (name, aging_rate, paused)
VALUES (%(name)s, coalesce(%(aging_rate)s::double precision, 0.3), coalesce(%(paused)s::boolean, false))
ON CONFLICT (name) DO UPDATE
   SET aging_rate = coalesce(%(aging_rate)s::double precision, q.aging_rate),
       paused = coalesce(%(paused)s::boolean, q.paused),
       updated_at = now()
RETURNING name, max_size, overflow_policy, drop_below_priority, aging_rate, paused, target_waits;

-- name: task_claim
-- Claim up to %(limit)s due tasks in effective-priority order. Each (queue, kind) pair is
-- read by an index scan of tasks_claim_idx, which returns rows already in sort_key order, so
-- the pending set is never sorted: only the few candidates are merged, by effective
-- priority at this instant (queues may age at different rates). SKIP LOCKED lets many
-- workers claim at once without waiting on each other.
-- The same round trip promotes scheduled tasks that fell due (as task_promote_due does):
-- they become claimable from the next claim on, and the NOTIFY brings it at once.
WITH promoted AS (
    UPDATE angela_queue.tasks t SET ready = true
      FROM (SELECT id FROM angela_queue.tasks
             WHERE status = 'pending' AND NOT ready AND run_at <= now()
             ORDER BY run_at
             LIMIT 1000
               FOR UPDATE SKIP LOCKED) due
     WHERE t.id = due.id
    RETURNING pg_notify('angela_queue', t.queue)
), candidates AS (
    SELECT c.id,
           q.aging_rate * angela_queue.epoch_minutes(coalesce(%(now)s::timestamptz, now()))
               - c.sort_key AS effective_priority
      FROM angela_queue.queues q
     CROSS JOIN unnest(%(kinds)s::text[]) AS k(kind)
      LEFT JOIN angela_queue.claim_floors f ON f.queue = q.name AND f.kind = k.kind
     CROSS JOIN LATERAL (
            SELECT t.id, t.sort_key
              FROM angela_queue.tasks t
             WHERE t.status = 'pending' AND t.ready AND t.queue = q.name AND t.kind = k.kind
               -- No due task lies below the floor (migration 0014): the scan starts there,
               -- past the dead entries a long transaction keeps in the index.
               AND t.sort_key >= coalesce(f.floor, '-infinity')
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
), claimed AS (
    UPDATE angela_queue.tasks t
       SET status = 'running',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           started_at = coalesce(%(now)s::timestamptz, now()),
           first_started_at = coalesce(t.first_started_at, %(now)s::timestamptz, now())
      FROM candidates c
     -- = ANY(ARRAY(…)) keeps the plan an index scan of the few candidates even when it is the
     -- generic plan of a prepared statement, which cannot know how small %(limit)s is.
     WHERE t.id = ANY(ARRAY(SELECT id FROM candidates)) AND t.id = c.id
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier, t.attempts,
              t.max_attempts, t.enqueued_at, t.run_at, t.deadline_at, t.started_at, t.batch_key,
              t.dedupe_key, t.timeout_s, c.effective_priority, t.worker_id
)
-- RETURNING keeps no order of its own: the worker starts tasks in the order they come.
SELECT * FROM claimed ORDER BY effective_priority DESC, id;

-- name: task_complete_many
-- Fenced: only rows still running under this worker and attempt change. A task that was
-- reclaimed meanwhile is left alone and missing from the result (a late result is a no-op).
-- Finishing frees a place in a bounded queue: producers waiting for it are notified.
-- Each row finds its own attempts and result in %(outcomes)s, a JSON object keyed by task
-- id ({"<id>": [attempts] or [attempts, result]}), by the object's binary search. A join
-- with unnest(…) gets, as a generic plan, a nested loop that unnests the arrays once per row
-- (2 ms for 100 tasks); array_position(…) in parallel arrays walks them once per row
-- (docs/discussions.md, "Session 7": 15 % of this statement, 35 % with results).
WITH done AS (
    UPDATE angela_queue.tasks t
       SET status = 'succeeded', finished_at = now(), last_error = NULL,
           result = %(outcomes)s::jsonb -> t.id::text -> 1
     WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running'
       AND t.worker_id = %(worker_id)s
       AND t.attempts = (%(outcomes)s::jsonb -> t.id::text ->> 0)::smallint
    RETURNING t.id, t.queue
), freed AS (
    SELECT pg_notify('angela_queue_space', q.name)
      FROM angela_queue.queues q
     WHERE q.max_size IS NOT NULL AND q.name IN (SELECT queue FROM done)
)
SELECT id FROM done, (SELECT count(*) FROM freed) AS notified;

-- name: task_fail_many
-- Fenced like task_complete_many. A row with a retry delay goes back to pending (keeping its
-- age, out of the claim index until due); a row without one is failed for good, which frees
-- its place in a bounded queue. The delay is added to the database's clock, never the
-- worker's: a worker with a skewed clock cannot make a retry early or late.
-- Each row finds its outcome in %(outcomes)s ({"<id>": [attempts, error, retry_in_s]}), as
-- in task_complete_many: a join with unnest(…) ran the unnest once per row (32–40 → 17–22
-- µs per task for 100 failures).
WITH failed AS (
    UPDATE angela_queue.tasks t
       SET (status, finished_at, run_at, ready, last_error) = (
            SELECT CASE WHEN r.retry_in IS NULL THEN 'failed' ELSE 'pending' END,
                   CASE WHEN r.retry_in IS NULL THEN now() END,
                   coalesce(now() + make_interval(secs => r.retry_in), t.run_at),
                   coalesce(r.retry_in <= 0, false),
                   r.error
              FROM (SELECT (o ->> 2)::float8 AS retry_in, o ->> 1 AS error
                      FROM (SELECT %(outcomes)s::jsonb -> t.id::text AS o) x) r)
     WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running'
       AND t.worker_id = %(worker_id)s
       AND t.attempts = (%(outcomes)s::jsonb -> t.id::text ->> 0)::smallint
    RETURNING t.id, t.status, t.queue
), freed AS (
    SELECT pg_notify('angela_queue_space', q.name)
      FROM angela_queue.queues q
     WHERE q.max_size IS NOT NULL
       AND q.name IN (SELECT queue FROM failed WHERE status = 'failed')
)
SELECT id, status FROM failed, (SELECT count(*) FROM freed) AS notified;

-- name: task_get_live_by_dedupe_key
SELECT id FROM angela_queue.tasks
 WHERE dedupe_key = %(dedupe_key)s AND status IN ('pending', 'running');

-- name: task_insert
-- NULLs take the database's defaults (the insert trigger fills them). %(push_at_insert)s
-- 'on' lets the insert take an idle worker's offer (migration 0018): only where this
-- statement is the whole transaction, since the offer stays locked until the commit.
INSERT INTO angela_queue.tasks
       (queue, kind, payload, priority, run_at, enqueued_at, max_attempts, timeout_s,
        batch_key, dedupe_key)
SELECT %(queue)s::text, %(kind)s::text, %(payload)s::jsonb, %(priority)s::smallint,
       %(run_at)s::timestamptz, %(enqueued_at)s::timestamptz, %(max_attempts)s::smallint,
       %(timeout_s)s::integer, %(batch_key)s::text, %(dedupe_key)s::text
  FROM (SELECT set_config('angela_queue.push_at_insert', %(push_at_insert)s, true)) AS flag
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running')
DO NOTHING
RETURNING id;

-- name: task_insert_many
-- A batch priced and inserted by the database in one statement (migration 0010): one array
-- per column, NULLs for the database's defaults. Rows: position (1-based), id, status.
-- Binary parameters (%%(…)b): half the client's cost of sending the arrays. The payloads
-- come as one JSON array, split here: one json.dumps per chunk instead of one per task.
SELECT ord, id, status
  FROM angela_queue.task_insert_many(%(queues)b::text[], %(kinds)b::text[],
                                     ARRAY(SELECT p FROM jsonb_array_elements(%(payloads)b::jsonb)
                                                         WITH ORDINALITY AS e(p, i) ORDER BY i),
                                     %(priorities)b::smallint[],
                                     %(run_ats)b::timestamptz[], %(enqueued_ats)b::timestamptz[],
                                     %(max_attempts)b::smallint[], %(timeouts)b::integer[],
                                     %(batch_keys)b::text[]);

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

-- name: task_adopt_unknown
-- After a listener reconnect or a late push: the tasks running under this worker that it
-- does not know it runs (pushed while their notification was lost, or claimed while the
-- reply was lost). The worker runs them: they are its own, under their current attempt.
SELECT t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier, t.attempts,
       t.max_attempts, t.enqueued_at, t.run_at, t.deadline_at, t.started_at, t.batch_key,
       t.dedupe_key, t.timeout_s,
       q.aging_rate * angela_queue.epoch_minutes(now()) - t.sort_key AS effective_priority,
       t.worker_id
  FROM angela_queue.tasks t
  JOIN angela_queue.queues q ON q.name = t.queue
 WHERE t.status = 'running' AND t.worker_id = %(worker_id)s
   AND t.id <> ALL(%(known_ids)s::bigint[])
 ORDER BY effective_priority DESC, t.id;

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
-- claim committed but its reply was lost with the connection), or, as a worker stops, a
-- task pushed to it that it will not start (migration 0017), go back to pending with that
-- attempt un-counted, since no handler ever started them.
UPDATE angela_queue.tasks
   SET status = 'pending', ready = true, attempts = attempts - 1,
       last_error = 'Released: claimed for its worker, which never started it (the claim''s'
                    ' reply was lost, or the worker stopped first)'
 WHERE status = 'running' AND worker_id = %(worker_id)s AND id <> ALL(%(known_ids)s::bigint[])
RETURNING id;

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
       -- Dated on the database's clock: the worker sends how long ago it was active.
       last_active_at = coalesce(now() - make_interval(secs => %(last_active_ago_s)s),
                                 last_active_at),
       batches_run = batches_run + %(batches)s,
       batch_tasks = batch_tasks + %(batch_tasks)s
 WHERE id = %(id)s AND status <> 'dead'
RETURNING stop_requested;

-- name: claim_floor_raise
-- Move each queue's claim floors up to its first due task (migration 0014), one queue at a
-- time in name order; each function call only tries the queue's lock, never waits for it.
SELECT coalesce(sum(angela_queue.claim_floor_raise(q, %(kinds)s::text[],
                                                   %(min_interval_s)s)), 0)::integer
  FROM (SELECT DISTINCT unnest(%(queues)s::text[]) AS q ORDER BY 1) queues;

-- name: worker_mark_dead
-- Its offer goes with it (migration 0017): no producer would fill it anyway.
WITH withdrawn AS (
    DELETE FROM angela_queue.worker_offers WHERE worker_id = %(id)s
)
UPDATE angela_queue.workers
   SET status = 'dead', heartbeat_at = now(), current_task_id = NULL
 WHERE id = %(id)s;

-- name: worker_mark_dead_stale
-- Live workers silent for longer than the timeout become dead; the database's clock is
-- the only one compared, never a worker's. heartbeat_at is kept as the last sign of life.
-- Safe from many reapers at once: an UPDATE that waited for another's row lock re-checks
-- the row after that commit, finds it dead, and leaves it alone.
WITH dead AS (
    UPDATE angela_queue.workers
       SET status = 'dead', current_task_id = NULL
     WHERE status <> 'dead'
       AND heartbeat_at < coalesce(%(now)s::timestamptz, now())
                          - make_interval(secs => %(timeout_s)s)
    RETURNING id
), withdrawn AS (
    -- Their offers too (migration 0017).
    DELETE FROM angela_queue.worker_offers o USING dead WHERE o.worker_id = dead.id
)
SELECT id FROM dead;

-- name: worker_register
INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status)
VALUES (%(hostname)s, %(pid)s, %(queues)s::text[], %(kinds)s::text[], %(concurrency)s, 'idle')
RETURNING id;

-- name: rule_delete
DELETE FROM angela_queue.boost_rules WHERE name = %(name)s RETURNING name;

-- name: rule_insert
-- The predicate is parsed by the ::jsonpath cast and test-evaluated by the boost_rules_check
-- trigger: a rule the database cannot evaluate is refused before it is stored.
INSERT INTO angela_queue.boost_rules (name, predicate, boost, enabled, description)
VALUES (%(name)s, %(predicate)s::jsonpath, %(boost)s, %(enabled)s, %(description)s)
RETURNING name, predicate::text AS predicate, boost, enabled, description;

-- name: rule_list
SELECT name, predicate::text AS predicate, boost, enabled, description
  FROM angela_queue.boost_rules ORDER BY name;

-- name: rule_match
-- The enabled rules a payload matches, evaluated exactly as the insert trigger does.
SELECT name, boost FROM angela_queue.boost_rules
 WHERE enabled
   AND coalesce(jsonb_path_match(%(payload)s::jsonb, predicate,
                                 angela_queue.rule_vars_object(), true), false)
 ORDER BY name;

-- name: rule_set_enabled
UPDATE angela_queue.boost_rules SET enabled = %(enabled)s WHERE name = %(name)s RETURNING name;

-- name: rule_var_delete
DELETE FROM angela_queue.rule_vars WHERE name = %(name)s RETURNING name;

-- name: rule_var_list
SELECT name, value FROM angela_queue.rule_vars ORDER BY name;

-- name: rule_var_set
INSERT INTO angela_queue.rule_vars (name, value) VALUES (%(name)s, %(value)s)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
RETURNING name, value;

-- name: tier_list
SELECT tier, min_base, max_base, extract(epoch FROM target_wait)::double precision AS target_wait_s
  FROM angela_queue.tiers ORDER BY min_base DESC;

-- name: tier_set_target_wait
-- Applies to tasks inserted afterwards: a deadline is fixed when its task is inserted.
UPDATE angela_queue.tiers SET target_wait = make_interval(secs => %(seconds)s)
 WHERE tier = %(tier)s RETURNING tier;

-- name: tier_slo_list
SELECT queue, tier, target_wait_s, pending, pending_past_target, oldest_wait_s, started_1h,
       met_1h, met_ratio_1h
  FROM angela_queue.tier_slo;

-- name: queue_set_target_wait
-- A per-queue override of a tier's target wait; NULL seconds removes the override.
UPDATE angela_queue.queues
   SET target_waits = CASE
           WHEN %(seconds)s::double precision IS NULL THEN target_waits - %(tier)s::text
           ELSE target_waits || jsonb_build_object(%(tier)s::text,
                                                  %(seconds)s::double precision || ' seconds')
       END,
       updated_at = now()
 WHERE name = %(name)s
RETURNING name, target_waits;

-- name: task_requeue
-- Dropped, failed or cancelled tasks back to pending, best first, within each queue's bound.
SELECT queue_name, requeued, left_behind
  FROM angela_queue.task_requeue(%(from_status)s, %(queue)s, %(ids)s::bigint[]);

-- name: task_cancel_many
-- Cancel tasks that have not started (pending or dropped); running ones are left alone.
UPDATE angela_queue.tasks
   SET status = 'cancelled', finished_at = now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('pending', 'dropped')
RETURNING id;

-- name: task_status_many
SELECT id, status FROM angela_queue.tasks WHERE id = ANY(%(ids)s::bigint[]);

-- name: claim_commit_async
-- A claim alone (no outcomes in its transaction): its commit need not wait for the WAL
-- flush. Lost in a server crash, it leaves its task pending, to run again (at least once).
SET LOCAL synchronous_commit = off;

-- name: session_generic_plans
-- The worker loop's connection: prepared statements keep their generic plan instead of
-- being planned anew at each call (see task_claim), and JIT stays off. A generic plan
-- cannot know how small %%(limit)s is, so with a million pending tasks its estimated cost
-- passes jit_above_cost and every claim would spend ~200 ms compiling a 1 ms query. Not
-- used when prepares are off.
SET plan_cache_mode = force_generic_plan; SET jit = off;

-- name: session_set_overflow
-- 'skip': a bounded queue's rejection skips the row instead of failing the statement (the
-- bulk client then reports it); '' restores the default. Local to the transaction.
SELECT set_config('angela_queue.overflow', %(mode)s, true);

-- name: decision_insert
-- One supervisor decision; decisions older than a week are pruned on the way.
WITH pruned AS (
    DELETE FROM angela_queue.supervisor_decisions WHERE at < now() - interval '7 days'
)
INSERT INTO angela_queue.supervisor_decisions (hostname, pending, workers, target, action, reason)
VALUES (%(hostname)s, %(pending)s, %(workers)s, %(target)s, %(action)s, %(reason)s);

-- name: decision_recent
SELECT at, hostname, pending, workers, target, action, reason
  FROM angela_queue.supervisor_decisions ORDER BY at DESC, id DESC LIMIT %(limit)s;

-- name: supervisor_lock
-- Lock per host, held by the check's one transaction: two supervisors on one host never act
-- at once (advisory-lock class 0x41510002; the second key is hashtext(hostname)). A
-- transaction lock, not a session one: through a transaction pooler a session lock stays
-- on whichever server connection took it, and is never released.
SELECT pg_try_advisory_xact_lock(1095827714, hashtext(%(hostname)s)) AS locked;

-- name: supervisor_tiers_at_risk
-- Tiers of the served queues whose oldest due task has used over half its target wait.
SELECT DISTINCT tier FROM angela_queue.tier_slo
 WHERE queue = ANY(%(queues)s::text[]) AND pending > 0
   AND oldest_wait_s > target_wait_s / 2;

-- name: worker_list_host
-- This host's workers that are not known dead, for the supervisor to check against the
-- process table (whatever their queues: a dead or stuck one is handled by any supervisor).
SELECT id, pid, status, stop_requested, started_at, last_active_at, current_task_id, queues,
       extract(epoch FROM now() - heartbeat_at)::double precision AS heartbeat_age_s
  FROM angela_queue.workers
 WHERE hostname = %(hostname)s AND status <> 'dead'
 ORDER BY id;

-- name: worker_request_stop
UPDATE angela_queue.workers SET stop_requested = true WHERE id = %(id)s AND status <> 'dead';

-- name: task_claim_batch
-- More low-tier tasks for a batch: same queue, kind and batch_key, best first, through
-- tasks_batch_idx; SKIP LOCKED so that two batches never share a task.
WITH mates AS (
    SELECT t.id, q.aging_rate * angela_queue.epoch_minutes(now()) - t.sort_key
               AS effective_priority
      FROM angela_queue.tasks t
      JOIN angela_queue.queues q ON q.name = t.queue
     WHERE t.status = 'pending' AND t.ready AND t.tier = 'low'
       AND t.queue = %(queue)s AND t.kind = %(kind)s AND t.batch_key = %(batch_key)s
       AND t.sort_key >= coalesce((SELECT f.floor FROM angela_queue.claim_floors f
                                    WHERE f.queue = %(queue)s AND f.kind = %(kind)s),
                                  '-infinity')  -- see task_claim
     ORDER BY t.sort_key, t.id
     LIMIT %(limit)s
       FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE angela_queue.tasks t
       SET status = 'running',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           started_at = now(),
           first_started_at = coalesce(t.first_started_at, now())
      FROM mates m
     WHERE t.id = ANY(ARRAY(SELECT id FROM mates)) AND t.id = m.id  -- see task_claim
    RETURNING t.id, t.queue, t.kind, t.payload, t.priority, t.boost, t.tier, t.attempts,
              t.max_attempts, t.enqueued_at, t.run_at, t.deadline_at, t.started_at, t.batch_key,
              t.dedupe_key, t.timeout_s, m.effective_priority, t.worker_id
)
SELECT * FROM claimed ORDER BY effective_priority DESC, id;  -- see task_claim

-- Monitoring reads (angela_queue/monitoring.py): the views, plus the few task lists the
-- dashboard and the metrics need. Each reads live rows through a partial index, or the last
-- hour through an index on a time column, never every finished row.

-- name: queue_stats_list
SELECT queue, tier, target_wait_s, pending, scheduled, running, oldest_pending_age_s,
       pending_past_target, done_1h, failed_1h, dropped_1h, cancelled_1h, started_1h,
       wait_p50_s, wait_p95_s, processing_p50_s, processing_p95_s, slo_breaches_1h, dropped,
       retrying, retried_1h, reclaimed
  FROM angela_queue.queue_stats;

-- name: worker_stats_list
-- Live workers, and dead ones heard from within the window (dead rows stay as history).
SELECT id, hostname, pid, queues, status, heartbeat_age_s, tasks_completed,
       tasks_failed, avg_processing_ms, current_task_id, last_active_at, started_at,
       tasks_running, avg_batch_size
  FROM angela_queue.worker_stats
 WHERE status <> 'dead' OR heartbeat_age_s < %(dead_window_s)s
 ORDER BY id;

-- name: task_histogram
-- The last hour's waits (first start − aging_from, as in queue_stats) and processing times
-- (finished − last start) per queue, tier and bucket. A bucket is the number of bounds
-- strictly below the value, so a value equal to a bound counts in that bound's bucket
-- (Prometheus `le`): width_bucket on the negated, reversed bounds counts the bounds >= it.
WITH b AS (
    SELECT %(wait_bounds)s::float8[] AS wb,
           (SELECT array_agg(-x ORDER BY x DESC) FROM unnest(%(wait_bounds)s::float8[]) x) AS wneg,
           %(processing_bounds)s::float8[] AS pb,
           (SELECT array_agg(-x ORDER BY x DESC)
              FROM unnest(%(processing_bounds)s::float8[]) x) AS pneg
), samples AS (
    SELECT f.queue, f.tier, 'wait' AS metric,
           extract(epoch FROM f.first_started_at - f.aging_from)::float8 AS value
      FROM angela_queue.first_starts_1h f
    UNION ALL
    SELECT t.queue, t.tier, 'processing',
           extract(epoch FROM t.finished_at - t.started_at)::float8
      FROM angela_queue.tasks t
     WHERE t.finished_at > now() - interval '1 hour' AND t.status IN ('succeeded', 'failed')
)
SELECT s.queue, s.tier, s.metric,
       CASE WHEN s.metric = 'wait' THEN cardinality(b.wb) - width_bucket(-s.value, b.wneg)
            ELSE cardinality(b.pb) - width_bucket(-s.value, b.pneg) END AS bucket,
       count(*) AS n, sum(s.value) AS total
  FROM samples s CROSS JOIN b
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4;

-- name: task_throughput
-- Finished tasks per time bucket over a recent window (the dashboard's chart).
SELECT date_bin(make_interval(secs => %(bucket_s)s), finished_at,
                timestamptz '2000-01-01 00:00+00') AS at,
       count(*) FILTER (WHERE status = 'succeeded') AS done,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'dropped') AS dropped
  FROM angela_queue.tasks
 WHERE finished_at > now() - make_interval(secs => %(window_s)s)
 GROUP BY 1
 ORDER BY 1;

-- name: task_list_failed
-- The most recent failures, newest first, through tasks_failed_idx.
SELECT id, queue, kind, tier, attempts, max_attempts, finished_at, last_error
  FROM angela_queue.tasks
 WHERE status = 'failed'
 ORDER BY finished_at DESC, id DESC
 LIMIT %(limit)s;

-- name: task_list_dropped
-- The dropped tasks a requeue would take first (best first), through tasks_dropped_idx.
SELECT id, queue, kind, tier, priority, enqueued_at, last_error
  FROM angela_queue.tasks
 WHERE status = 'dropped'
 ORDER BY queue, sort_key, id
 LIMIT %(limit)s;

-- name: cleaner_lock
-- One cleaner at a time per database (advisory-lock class 0x41510003), held until the
-- cleaner's transaction ends; the others skip their turn.
SELECT pg_try_advisory_xact_lock(1095827715, 0) AS locked;

-- name: task_delete_finished_before
-- A batch of finished tasks older than the retention, oldest first, through
-- tasks_finished_at_idx; the database's clock decides what is old.
WITH doomed AS (
    SELECT id FROM angela_queue.tasks
     WHERE finished_at < now() - make_interval(secs => %(older_than_s)s)
       AND status IN ('succeeded', 'failed', 'cancelled', 'dropped')
     ORDER BY finished_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM angela_queue.tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id;

-- name: worker_delete_dead_before
-- Rows of workers dead for longer than the retention, once nothing runs under them.
DELETE FROM angela_queue.workers w
 WHERE w.status = 'dead' AND w.heartbeat_at < now() - make_interval(secs => %(older_than_s)s)
   AND NOT EXISTS (SELECT 1 FROM angela_queue.tasks t
                    WHERE t.status = 'running' AND t.worker_id = w.id)
RETURNING w.id;

-- name: task_kinds_unserved
-- Due pending tasks that no live worker would claim (the view of migration 0015), the
-- largest groups first.
SELECT queue, kind, pending, oldest_pending_age_s
  FROM angela_queue.unserved_kinds
 ORDER BY pending DESC, queue, kind
 LIMIT %(limit)s;
