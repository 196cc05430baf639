-- Named queries of the Postgres engine, read once by `queries.py`.
--
-- Each query starts at a `-- name: <name>` line and runs to the next one. `{schema}` is
-- the engine's schema (a quoted identifier), `{job_columns}` the job columns in
-- `JOB_COLUMNS` order. Parameters are psycopg's (`%s`, `%(name)s`).

-- name: clock
SELECT {schema}.clock_ms(NULL);

-- name: load_job
SELECT {job_columns} FROM {schema}.jobs WHERE id = %s;

-- name: load_job_for_update
SELECT {job_columns} FROM {schema}.jobs WHERE id = %s FOR UPDATE;

-- name: enqueue
SELECT job_id, created, job_state FROM {schema}.enqueue(%s::jsonb, %s::bigint);

-- name: enqueue_one
-- `enqueue` of one job with no tenant, dedupe key, delay or run_at (migration 0017): its
-- columns as typed parameters; the same rows back.
SELECT job_id, created, job_state FROM {schema}.enqueue_one(%s, %s, %s, %s, %s::integer,
    %s::integer, %s::bigint, %s, %s::bigint);

-- name: enqueue_batch
-- `enqueue` of several jobs (migration 0015): ids and payloads each as one text and its
-- separator, the other columns as binary arrays (`%b`; see flow.py `batch_params`), and
-- one row back.
SELECT made, held_ids, held_created, held_states FROM {schema}.enqueue_batch(
    string_to_array(%s::text, %s::text), string_to_array(%s::text, %s::text),
    %b::text[], %b::text[], %b::integer[], %b::integer[],
    %b::text[], %b::text[], %b::bigint[], %b::text[], %b::bigint[], %b::bigint[],
    %s::bigint);

-- name: flush_wal
-- After an enqueue that handed its job to an idle worker (migration 0014: that commit did
-- not wait for its WAL flush, so the worker got the NOTIFY at once): one small transaction
-- that writes WAL (a transactional logical message, no table touched) and commits at the
-- session's own `synchronous_commit`, so its flush covers the enqueue's commit record,
-- which is earlier in the WAL. Safe to run twice, and from any session.
SELECT pg_logical_emit_message(true, 'conveyor', 'flush');

-- name: enqueue_in
-- `enqueue` on a caller's own connection (transactional enqueue), which the pool never
-- told the app's quiet queues (rule 7): the first argument names them for this
-- transaction (set_config(..., true)) before the function runs, since a function's
-- arguments are evaluated before its body; one statement, so it holds in autocommit too.
-- `conveyor.handoff` off: no job stored in a caller's transaction is handed to an idle
-- worker (migration 0011), since its lease would run from before a COMMIT that may come
-- much later.
SELECT job_id, created, job_state FROM {schema}.enqueue(
    CASE WHEN set_config('conveyor.unstreamed', %s, true) IS NULL
         OR set_config('conveyor.handoff', 'off', true) IS NULL THEN NULL ELSE %s::jsonb END,
    %s::bigint);

-- name: exchange
SELECT {schema}.exchange(%s::jsonb, %s::text[], %s, %s, %s, %s::bigint);

-- name: exchange_claim
-- `exchange` for a call that reports no outcome (an idle worker's claim after a wake-up):
-- its transaction commits without waiting for the WAL flush (synchronous_commit off, for
-- this transaction only). Nothing it writes was acknowledged to anyone: if the server
-- crashes before that WAL reaches disk, the claim (or promotion, or lease recovery) is
-- undone, so the job is claimable again and runs again (at-least-once), and its worker's
-- outcome is refused by the token. Any later synchronous commit (the worker's own
-- outcomes, an enqueue) flushes it first, since the WAL is written in order.
SELECT {schema}.exchange(%s::jsonb, %s::text[], %s, %s, %s, %s::bigint)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS quick;

-- name: exchange_waiting
-- `exchange` for a worker that takes handed jobs (migration 0011: it registers when the
-- claim found nothing). Returns exchange's JSON and the queues it is registered on.
-- Commits without waiting for the WAL flush, as `exchange_claim`; when outcomes ride on
-- it the engine runs `flush_wal` next, before the exchange returns, so they are as
-- durable as before. Why: the exchange NOTIFYs ('events'), and Postgres holds one lock
-- for every NOTIFYing transaction of the server from its pre-commit until its commit
-- ends, flush included; a producer handing this worker its next job (which NOTIFYs
-- too) waited behind that flush (W2: 2-4 ms in a traced run's slowest pickups,
-- bench/RESULTS.md "pgw2tail"). `flush_wal` NOTIFYs nothing, so it takes no such lock.
SELECT w.result, w.waiting
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS quick,
    {schema}.exchange_waiting(%s::jsonb, %s::text[], %s, %s, %s, %s::bigint, %s, %s, %s) w;

-- name: handed_to
-- Jobs handed to these workers (0011: handed tokens start with 'h') and still running.
SELECT {job_columns} FROM {schema}.jobs
WHERE state = 'running' AND worker = ANY(%s::text[]) AND token LIKE 'h%%';

-- name: stop_waiting
-- Waits for a producer handing this worker a job right now (its row lock), so once this
-- returns every job handed to it is committed and in `handed_to`.
DELETE FROM {schema}.waiting WHERE worker = %s;

-- name: hold_alive
SELECT pg_try_advisory_lock(%s);

-- name: recover
SELECT sum(r.stalled + r.failed)
FROM unnest(%s::text[]) AS q(name), {schema}.clock_ms(%s::bigint) AS now(ms),
    LATERAL {schema}.recover(q.name, now.ms) AS r;

-- name: insert_event
INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s);

-- name: trim_events
DELETE FROM {schema}.events WHERE queue = %(queue)s AND id <= (
    SELECT id FROM {schema}.events WHERE queue = %(queue)s ORDER BY id DESC
    OFFSET %(keep)s LIMIT 1);

-- name: notify
SELECT pg_notify(%s, %s);

-- name: dedupe_holder
SELECT id, state FROM {schema}.jobs WHERE queue = %s AND dedupe_key = %s
    AND state IN ('scheduled', 'pending', 'running', 'waiting-children');

-- name: extend_leases
-- One statement (autocommit): the deadline is the database clock + the lease.
UPDATE {schema}.jobs j SET lease_until_ms = {schema}.clock_ms(%s::bigint) + %s
FROM unnest(%s::text[], %s::text[]) AS l(id, token)
WHERE j.id = l.id AND j.token = l.token AND j.state = 'running'
RETURNING j.id;

-- name: set_progress
-- One statement (autocommit): store, record the event, NOTIFY; 1 row when stored.
WITH u AS (
    UPDATE {schema}.jobs SET progress = %(progress)s
    WHERE id = %(id)s AND token = %(token)s AND state = 'running'
    RETURNING queue, task, tenant, attempt
), e AS (
    INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
    SELECT u.queue, 'progress', %(id)s, u.task, u.tenant, u.attempt,
        {schema}.clock_ms(%(now)s::bigint), %(data)s FROM u
), n AS (
    SELECT pg_notify(%(channel)s, 'events') FROM u
)
SELECT u.queue, (SELECT count(*) FROM n) FROM u;

-- name: queue_names
SELECT name FROM {schema}.queues WHERE known ORDER BY name;

-- name: queue_counts
SELECT state, count(*) FROM {schema}.jobs WHERE queue = %s GROUP BY state;

-- name: queue_paused
SELECT paused FROM {schema}.queues WHERE name = %s;

-- name: oldest_pending
SELECT min(created_ms) FROM {schema}.jobs WHERE queue = %s AND state = 'pending';

-- name: finished_since
SELECT count(*) FROM {schema}.jobs WHERE queue = %s AND state = %s
    AND finished_ms IS NOT NULL AND finished_ms > %s;

-- name: throughput
SELECT (%(end)s - finished_ms) / 60000 AS back, count(*) FROM {schema}.jobs
WHERE queue = %(queue)s AND state = %(state)s AND finished_ms IS NOT NULL
    AND finished_ms > %(since)s GROUP BY back;

-- name: list_scheduled
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = 'scheduled'
    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (scheduled_ms, rid) > (%(k1)s, %(k2)s)
ORDER BY scheduled_ms, rid LIMIT %(n)s;

-- name: list_running
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = 'running'
    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (created_ms, rid) < (%(k1)s, %(k2)s)
ORDER BY created_ms DESC, rid DESC LIMIT %(n)s;

-- name: list_finished
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = %(state)s AND finished_ms IS NOT NULL
    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (finished_ms, rid) < (%(k1)s, %(k2)s)
ORDER BY finished_ms DESC, rid DESC LIMIT %(n)s;

-- name: list_pending
-- Pending jobs in claim order after the cursor (priority, seq): (priority DESC, seq
-- ASC) is not one row-value range, hence the OR.
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = 'pending'
    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (priority < %(priority)s OR (priority = %(priority)s AND seq > %(seq)s))
ORDER BY priority DESC, seq LIMIT %(n)s;

-- name: stamp_events
-- Commit positions for the event transactions that committed since the last stamp
-- (migration 0010); a reader runs it before `read_events`, in the same transaction.
SELECT {schema}.stamp_events();

-- name: read_events
-- After the position (commit position, id), in commit order (migration 0010: positions
-- are stamped one holder of the lock at a time, so none can appear behind a reader).
SELECT e.id, e.queue, e.kind, e.job_id, e.task, e.tenant, e.attempt, e.at_ms, e.data, c.pos
FROM {schema}.event_commits c
JOIN {schema}.events e ON e.xid = c.xid AND e.queue = %(queue)s
WHERE c.pos >= %(pos)s AND (c.pos > %(pos)s OR e.id > %(id)s)
ORDER BY c.pos, e.id LIMIT %(n)s;

-- name: read_horizon
-- "Now" as a reader's position: stamps what has committed, then the last position;
-- every event still to come gets a later one.
SELECT {schema}.event_horizon();

-- name: trim_event_commits
-- Commit positions of transactions none of whose events are left (events are trimmed
-- oldest first; every remaining event's transaction keeps its row).
DELETE FROM {schema}.event_commits WHERE xid < (SELECT min(xid) FROM {schema}.events);

-- name: pause
INSERT INTO {schema}.queues (name, paused) VALUES (%s, true)
ON CONFLICT (name) DO UPDATE SET paused = true;

-- name: resume
UPDATE {schema}.queues SET paused = false WHERE name = %s;

-- name: retry_row
-- Operator retry: back to pending with a fresh attempt budget (the errors are kept),
-- unless another live job holds the dedupe key (the caller names it).
UPDATE {schema}.jobs j SET state = 'pending', attempt = 0, finished_ms = NULL,
    result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL,
    seq = nextval('{schema}.job_seq')
WHERE j.id = %s AND j.state IN ('failed', 'cancelled') AND (j.dedupe_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM {schema}.jobs h WHERE h.queue = j.queue AND h.dedupe_key = j.dedupe_key
    AND h.state IN ('scheduled', 'pending', 'running', 'waiting-children')))
RETURNING j.id;

-- name: retry_all_page
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = %(state)s AND finished_ms IS NOT NULL
    AND (finished_ms, rid) < (%(k1)s, %(k2)s)
ORDER BY finished_ms DESC, rid DESC LIMIT %(n)s FOR UPDATE SKIP LOCKED;

-- name: cancel
UPDATE {schema}.jobs SET state = 'cancelled', finished_ms = %s, token = NULL,
    lease_until_ms = NULL
WHERE id = %s;

-- name: promote
UPDATE {schema}.jobs SET state = 'pending', scheduled_ms = NULL,
    seq = nextval('{schema}.job_seq')
WHERE id = %s;

-- name: clean
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs WHERE queue = %s AND state = %s
    AND finished_ms IS NOT NULL AND finished_ms <= %s
    ORDER BY finished_ms LIMIT %s FOR UPDATE SKIP LOCKED);

-- name: purge_batch
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs WHERE queue = %s LIMIT %s FOR UPDATE SKIP LOCKED);

-- name: purge_vacuum
-- After a purge that deleted many jobs (operations.py): reclaim their dead tuples and
-- index entries now, and those the event log's trim left (it deletes about three events
-- for every job that passed; its range delete steps over every dead entry before the
-- cut). Autocommit only (VACUUM runs outside a transaction). SKIP_LOCKED: a table
-- another VACUUM (autovacuum) holds is left to that one; the purge does not wait.
-- Empty pages at the table's end are cut off as autovacuum does (under a lock taken
-- only if free, given up as soon as a statement waits for it): with `TRUNCATE false`
-- the table kept its 1,157 pages and W1 read 6% more buffers per job (42.2 -> 45).
-- The purge also deleted the queue's tenants and rate log (`purge_forget`): their dead
-- index entries sit where the fair claim's scans begin (`tenants_turn` is keyed on turns,
-- which only grow), so they go too.
-- Without a table's ownership, Postgres skips it with a warning.
VACUUM (SKIP_LOCKED) {schema}.jobs, {schema}.events, {schema}.event_commits, {schema}.tenants,
    {schema}.rate_log;

-- name: purge_forget
DELETE FROM {schema}.tenants WHERE queue = %s;

-- name: purge_rate_log
DELETE FROM {schema}.rate_log WHERE queue = %s;

-- name: register_worker_prune
DELETE FROM {schema}.workers WHERE expires_ms <= %s;

-- name: register_worker
INSERT INTO {schema}.workers (id, info, last_seen_ms, expires_ms) VALUES (%s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET info = excluded.info,
    last_seen_ms = excluded.last_seen_ms, expires_ms = excluded.expires_ms;

-- name: unregister_worker
DELETE FROM {schema}.workers WHERE id = %s;

-- name: live_workers
SELECT id, info, last_seen_ms, expires_ms FROM {schema}.workers
WHERE expires_ms > %s ORDER BY id;

-- name: read_limits
SELECT queue, concurrency, tenant_concurrency, rate, rate_window_ms, tenant_rate,
    tenant_rate_window_ms FROM {schema}.queue_limits;

-- name: delete_limits
DELETE FROM {schema}.queue_limits WHERE queue = %s;

-- name: put_limits
INSERT INTO {schema}.queue_limits (queue, concurrency, tenant_concurrency, rate,
    rate_window_ms, tenant_rate, tenant_rate_window_ms)
VALUES (%(queue)s, %(concurrency)s, %(tenant_concurrency)s, %(rate)s, %(rate_window_ms)s,
        %(tenant_rate)s, %(tenant_rate_window_ms)s)
ON CONFLICT (queue) DO UPDATE SET concurrency = excluded.concurrency,
    tenant_concurrency = excluded.tenant_concurrency, rate = excluded.rate,
    rate_window_ms = excluded.rate_window_ms, tenant_rate = excluded.tenant_rate,
    tenant_rate_window_ms = excluded.tenant_rate_window_ms;

-- name: tenant_running
SELECT tenant, count(*) FROM {schema}.jobs
WHERE queue = %s AND state = 'running' AND tenant IS NOT NULL
GROUP BY tenant ORDER BY tenant;

-- name: lease_holder
SELECT holder, expires_ms FROM {schema}.leases WHERE name = %s AND expires_ms > %s;

-- name: lease_acquire
-- Free, expired or already ours: take it (one statement, so it is atomic).
INSERT INTO {schema}.leases AS l (name, holder, expires_ms) VALUES (%(name)s, %(holder)s, %(until)s)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
    WHERE l.holder = excluded.holder OR l.expires_ms <= %(now)s
RETURNING 1;

-- name: lease_renew
UPDATE {schema}.leases SET expires_ms = %s WHERE name = %s AND holder = %s AND expires_ms > %s;

-- name: lease_release
DELETE FROM {schema}.leases WHERE name = %s AND holder = %s AND expires_ms > %s;

-- name: schedule_put
INSERT INTO {schema}.schedules (name, spec, source, paused, since_ms)
VALUES (%s, %s, %s, false, %s)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, source = excluded.source;

-- name: schedules
SELECT name, spec, source, paused, since_ms, last_run_ms, last_error FROM {schema}.schedules
ORDER BY name;

-- name: schedule_delete
DELETE FROM {schema}.schedules WHERE name = %s;

-- name: schedule_pause
-- Resuming a paused schedule moves its baseline to now.
UPDATE {schema}.schedules
SET since_ms = CASE WHEN paused AND NOT %(paused)s THEN %(now)s ELSE since_ms END,
    paused = %(paused)s
WHERE name = %(name)s;

-- name: schedule_advance
-- Fenced by the live lease (locked FOR SHARE, so it cannot change hands meanwhile).
-- A recorded run clears the last error.
UPDATE {schema}.schedules SET last_run_ms = %(run)s, last_error = NULL WHERE name = %(name)s
    AND (last_run_ms IS NULL OR last_run_ms < %(run)s)
    AND EXISTS (SELECT 1 FROM {schema}.leases WHERE name = %(lease)s
                AND holder = %(holder)s AND expires_ms > %(now)s FOR SHARE);

-- name: schedule_error
-- Fenced like schedule_advance: a deposed leader cannot write an error.
UPDATE {schema}.schedules SET last_error = %(error)s WHERE name = %(name)s
    AND EXISTS (SELECT 1 FROM {schema}.leases WHERE name = %(lease)s
                AND holder = %(holder)s AND expires_ms > %(now)s FOR SHARE);

-- name: outbox_add
INSERT INTO {schema}.outbox (job) SELECT value::text FROM jsonb_array_elements(%s::jsonb)
RETURNING id;

-- name: outbox_take
-- One relay batch, oldest first; rows another relay holds are skipped, not waited for.
SELECT id, job, created_ms FROM {schema}.outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED;

-- name: outbox_done
DELETE FROM {schema}.outbox WHERE id = ANY(%s);

-- name: outbox_lag
-- Age of the oldest row not yet relayed, in ms (NULL when the outbox is empty).
SELECT {schema}.clock_ms(%s::bigint) - min(created_ms) FROM {schema}.outbox;

-- name: flow_key_lock
-- Two flow() calls with one root dedupe key are serialised until COMMIT.
SELECT pg_advisory_xact_lock(hashtext(%s));

-- name: flow_holder
-- The job a flow's root id or dedupe key names already (a retried flow() call).
SELECT id, state FROM {schema}.jobs WHERE id = %s
UNION ALL
SELECT id, state FROM {schema}.jobs WHERE queue = %s AND dedupe_key = %s
    AND state IN ('scheduled', 'pending', 'running', 'waiting-children')
LIMIT 1;

-- name: insert_flow_job
INSERT INTO {schema}.jobs (id, queue, task, payload, state, max_attempts, priority, tenant,
    dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq, parent_id, flow_policy)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, nextval('{schema}.job_seq'),
    %s, %s);

-- name: flow_mark_queue
INSERT INTO {schema}.queues (name, known) VALUES (%s, true)
ON CONFLICT (name) DO UPDATE SET known = true WHERE NOT {schema}.queues.known;

-- name: flow_links
SELECT parent_id, flow_policy, ARRAY(SELECT k.id FROM {schema}.jobs k
    WHERE k.parent_id = j.id ORDER BY k.rid) FROM {schema}.jobs j WHERE j.id = %s;

-- name: flow_rearm
SELECT {schema}.flow_rearm(%s, %s);

-- name: flow_tenant
INSERT INTO {schema}.tenants (queue, tenant) VALUES (%s, %s) ON CONFLICT DO NOTHING;

-- name: list_waiting
-- Flow parents waiting for their children, newest first.
SELECT {job_columns}, rid FROM {schema}.jobs
WHERE queue = %(queue)s AND state = 'waiting-children'
    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (created_ms, rid) < (%(k1)s, %(k2)s)
ORDER BY created_ms DESC, rid DESC LIMIT %(n)s;
