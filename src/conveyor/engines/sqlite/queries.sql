-- Named queries of the SQLite engine, read once by `queries.py` (procrastinate style).
--
-- Each query starts at a `-- name: <name>` line and runs to the next one; the comment
-- lines right after the name say what it is for. `{job_columns}` is replaced by the
-- job columns in `JOB_COLUMNS` order (the row layout the Python side decodes).
-- Queries against a partial index repeat its WHERE term as a literal: SQLite proves a
-- partial index usable at prepare time, not from parameters (see the migrations).

-- name: load_job
SELECT {job_columns} FROM jobs WHERE id = ?;

-- name: reserve_seq
-- Reserve n consecutive FIFO positions at the back of every line; returns the last.
UPDATE meta SET value = value + ? WHERE key = 'seq' RETURNING value;

-- name: front_seq
-- A position before every job ever queued (Place.FRONT).
UPDATE meta SET value = value - 1 WHERE key = 'front' RETURNING value;

-- name: next_turn
UPDATE meta SET value = value + 1 WHERE key = 'turn' RETURNING value;

-- name: insert_event
INSERT INTO events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: trim_events
DELETE FROM events WHERE queue = ?1 AND id <= (
    SELECT id FROM events WHERE queue = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2);

-- name: insert_job
-- DO NOTHING without a target covers both uniqueness rules: the id (an enqueue retried
-- with the same id, e.g. by the outbox relay after a crash, is idempotent) and the
-- partial dedupe index. The caller tells which one applied.
INSERT INTO jobs (id, queue, task, payload, state, max_attempts, priority, tenant,
                  dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING;

-- name: job_state
SELECT id, state, seq FROM jobs WHERE id = ?;

-- name: dedupe_holder
-- The live job holding a dedupe key (index jobs_dedupe).
SELECT id, state FROM jobs WHERE queue = ? AND dedupe_key = ?
    AND dedupe_key IS NOT NULL
    AND state IN ('scheduled', 'pending', 'running', 'waiting-children');

-- name: mark_queues_known
INSERT INTO queues (name, known) VALUES (?, 1)
ON CONFLICT (name) DO UPDATE SET known = 1 WHERE known = 0;

-- name: paused_queues
SELECT name FROM queues WHERE paused = 1;

-- name: claim
-- Claim the best pending jobs without a tenant: highest priority first, FIFO within a
-- priority. The token is 128 random bits made per row inside SQLite (no per-job Python).
UPDATE jobs SET state = 'running', attempt = attempt + 1,
    token = lower(hex(randomblob(16))), started_ms = :now, worker = :worker,
    lease_until_ms = :lease_until
WHERE rowid IN (SELECT rowid FROM jobs WHERE queue = :queue AND state = 'pending'
                AND tenant IS NULL ORDER BY priority DESC, seq LIMIT :limit)
RETURNING {job_columns};

-- name: claim_tenant
-- The same for one tenant's bucket (index jobs_tenant_claim).
UPDATE jobs SET state = 'running', attempt = attempt + 1,
    token = lower(hex(randomblob(16))), started_ms = :now, worker = :worker,
    lease_until_ms = :lease_until
WHERE rowid IN (SELECT rowid FROM jobs WHERE queue = :queue AND state = 'pending'
                AND tenant IS NOT NULL AND tenant = :tenant
                ORDER BY priority DESC, seq LIMIT :limit)
RETURNING {job_columns};

-- name: has_tenant_jobs
SELECT 1 FROM tenants WHERE queue = ? AND pending > 0 LIMIT 1;

-- name: has_free_jobs
-- Pending jobs without a tenant (the rotation's extra bucket).
SELECT 1 FROM jobs WHERE queue = ? AND state = 'pending' AND tenant IS NULL LIMIT 1;

-- name: ready_tenants
-- The rotation: tenants with pending jobs, least recently served first.
SELECT tenant, running, turn FROM tenants WHERE queue = ? AND pending > 0
ORDER BY turn LIMIT ?;

-- name: free_bucket_turn
SELECT turn FROM tenants WHERE queue = ? AND tenant = '';

-- name: set_turn
INSERT INTO tenants (queue, tenant, turn) VALUES (?, ?, ?)
ON CONFLICT (queue, tenant) DO UPDATE SET turn = excluded.turn;

-- name: running_count
SELECT n FROM queue_counts WHERE queue = ? AND state = 'running';

-- name: rate_window_drop
DELETE FROM rate_log WHERE queue = ? AND scope = ? AND at_ms <= ?;

-- name: rate_window_read
SELECT count(*), min(at_ms) FROM rate_log WHERE queue = ? AND scope = ?;

-- name: rate_log_add
INSERT INTO rate_log (queue, scope, at_ms) VALUES (?, ?, ?);

-- name: due_scheduled
-- Due scheduled jobs of a queue, oldest due first, enqueue order among equal due times (index jobs_due), as on Redis.
SELECT rowid FROM jobs WHERE queue = ? AND state = 'scheduled' AND scheduled_ms <= ?
ORDER BY scheduled_ms, seq LIMIT ?;

-- name: promote_row
UPDATE jobs SET state = 'pending', scheduled_ms = NULL, seq = ? WHERE rowid = ?;

-- name: expired_leases
-- Running jobs whose lease deadline passed (index jobs_lease).
SELECT id, token, attempt, max_attempts FROM jobs
WHERE queue = ? AND state = 'running' AND lease_until_ms <= ? LIMIT ?;

-- name: next_due
SELECT min(scheduled_ms) FROM jobs WHERE queue = ? AND state = 'scheduled';

-- name: extend_lease
UPDATE jobs SET lease_until_ms = ? WHERE id = ? AND token = ? AND state = 'running';

-- name: set_progress
UPDATE jobs SET progress = :progress
WHERE id = :id AND token = :token AND state = 'running'
RETURNING queue, task, tenant, attempt;

-- name: data_version
PRAGMA data_version;

-- name: queue_names
SELECT name FROM queues WHERE known = 1 ORDER BY name;

-- name: queue_counts
SELECT state, n FROM queue_counts WHERE queue = ?;

-- name: queue_paused
SELECT paused FROM queues WHERE name = ?;

-- name: oldest_pending
SELECT min(created_ms) FROM jobs WHERE queue = ? AND state = 'pending';

-- name: finished_since
-- A range count on the finished index: proportional to the window's throughput.
SELECT count(*) FROM jobs WHERE queue = ? AND state = ? AND finished_ms > ?;

-- name: throughput
-- Minutes back from :end (0 = the newest minute) of the jobs finished in the window.
SELECT (:end - finished_ms) / 60000 AS back, count(*) FROM jobs
WHERE queue = :queue AND state = :state AND finished_ms > :since GROUP BY back;

-- name: list_scheduled
-- Listings are keyset pages: each one index range after the cursor (:k1, :k2).
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'scheduled' AND (:tenant IS NULL OR tenant = :tenant)
    AND (scheduled_ms, rowid) > (:k1, :k2)
ORDER BY scheduled_ms, rowid LIMIT :n;

-- name: list_running
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'running' AND (:tenant IS NULL OR tenant = :tenant)
    AND (created_ms, rowid) < (:k1, :k2)
ORDER BY created_ms DESC, rowid DESC LIMIT :n;

-- name: list_finished
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = :state AND finished_ms IS NOT NULL
    AND (:tenant IS NULL OR tenant = :tenant) AND (finished_ms, rowid) < (:k1, :k2)
ORDER BY finished_ms DESC, rowid DESC LIMIT :n;

-- name: list_scheduled_tenant
-- One tenant's jobs (migration 0002's partial indexes): the same keyset pages, with
-- `tenant = :tenant` so the index range starts at the tenant (an `OR :tenant IS NULL`
-- would leave SQLite scanning every tenant's rows).
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'scheduled' AND tenant = :tenant
    AND (scheduled_ms, rowid) > (:k1, :k2)
ORDER BY scheduled_ms, rowid LIMIT :n;

-- name: list_running_tenant
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'running' AND tenant = :tenant
    AND (created_ms, rowid) < (:k1, :k2)
ORDER BY created_ms DESC, rowid DESC LIMIT :n;

-- name: list_finished_tenant
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = :state AND finished_ms IS NOT NULL AND tenant = :tenant
    AND (finished_ms, rowid) < (:k1, :k2)
ORDER BY finished_ms DESC, rowid DESC LIMIT :n;

-- name: list_pending_one_same
-- One tenant's pending jobs (index jobs_tenant_claim), in claim order.
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant = :tenant
    AND priority = :priority AND seq > :seq
ORDER BY priority DESC, seq LIMIT :n;

-- name: list_pending_one_lower
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant = :tenant AND priority < :priority
ORDER BY priority DESC, seq LIMIT :n;

-- name: list_pending_free_same
-- Pending jobs without a tenant: the rest of the cursor's priority (index jobs_claim).
-- (priority DESC, seq ASC) is not one row-value range, so a page is this range and
-- then list_pending_free_lower.
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant IS NULL
    AND priority = :priority AND seq > :seq
ORDER BY priority DESC, seq LIMIT :n;

-- name: list_pending_free_lower
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant IS NULL AND priority < :priority
ORDER BY priority DESC, seq LIMIT :n;

-- name: list_pending_tenant_same
-- Tenant jobs (index jobs_tenant_order), merged with the above by claim order.
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant IS NOT NULL
    AND (:tenant IS NULL OR tenant = :tenant) AND priority = :priority AND seq > :seq
ORDER BY priority DESC, seq LIMIT :n;

-- name: list_pending_tenant_lower
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'pending' AND tenant IS NOT NULL
    AND (:tenant IS NULL OR tenant = :tenant) AND priority < :priority
ORDER BY priority DESC, seq LIMIT :n;

-- name: read_events
SELECT id, queue, kind, job_id, task, tenant, attempt, at_ms, data
FROM events WHERE queue = ? AND id > ? ORDER BY id LIMIT ?;

-- name: last_event_id
SELECT max(id) FROM events WHERE queue = ?;

-- name: pause
INSERT INTO queues (name, paused) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET paused = 1;

-- name: resume
UPDATE queues SET paused = 0 WHERE name = ?;

-- name: retry_row
-- Operator retry: back to pending with a fresh attempt budget (the errors are kept).
-- OR IGNORE: the dedupe index refuses a key another live job holds; the caller checks.
UPDATE OR IGNORE jobs SET state = 'pending', attempt = 0, finished_ms = NULL,
    result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL, seq = ?
WHERE id = ? AND state IN ('failed', 'cancelled');

-- name: retry_all_page
-- One batch of retry_all, newest finish first below a moving bound (:k1, :k2), so a
-- skipped job (its dedupe key held elsewhere) is never read twice.
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = :state AND finished_ms IS NOT NULL
    AND (finished_ms, rowid) < (:k1, :k2)
ORDER BY finished_ms DESC, rowid DESC LIMIT :n;

-- name: cancel
UPDATE jobs SET state = 'cancelled', finished_ms = ?, token = NULL, lease_until_ms = NULL
WHERE id = ?;

-- name: promote
UPDATE jobs SET state = 'pending', scheduled_ms = NULL, seq = ? WHERE id = ?;

-- name: clean
-- Finished jobs only (the facade refused live states), oldest finish first.
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state = ? AND finished_ms <= ?
    ORDER BY finished_ms LIMIT ?);

-- name: purge_scheduled
-- purge, one batch per statement (short write locks), one partial index per state.
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state = 'scheduled' LIMIT ?);

-- name: purge_pending
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state = 'pending' LIMIT ?);

-- name: purge_running
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state = 'running' LIMIT ?);

-- name: purge_finished
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state IN ('completed', 'failed', 'cancelled')
    AND finished_ms IS NOT NULL LIMIT ?);

-- name: purge_forget
-- The triggers left the purged queue's tenant rows at zero; its limits stay.
DELETE FROM tenants WHERE queue = ? AND pending <= 0 AND running <= 0;

-- name: purge_rate_log
DELETE FROM rate_log WHERE queue = ?;

-- name: register_worker_prune
DELETE FROM workers WHERE expires_ms <= ?;

-- name: register_worker
INSERT INTO workers (id, info, last_seen_ms, expires_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET info = excluded.info,
    last_seen_ms = excluded.last_seen_ms, expires_ms = excluded.expires_ms;

-- name: unregister_worker
DELETE FROM workers WHERE id = ?;

-- name: live_workers
SELECT id, info, last_seen_ms, expires_ms FROM workers WHERE expires_ms > ? ORDER BY id;

-- name: read_limits
SELECT queue, concurrency, tenant_concurrency, rate, rate_window_ms, tenant_rate,
    tenant_rate_window_ms FROM queue_limits;

-- name: delete_limits
DELETE FROM queue_limits WHERE queue = ?;

-- name: put_limits
INSERT INTO queue_limits (queue, concurrency, tenant_concurrency, rate, rate_window_ms,
                          tenant_rate, tenant_rate_window_ms)
VALUES (:queue, :concurrency, :tenant_concurrency, :rate, :rate_window_ms, :tenant_rate,
        :tenant_rate_window_ms)
ON CONFLICT (queue) DO UPDATE SET concurrency = excluded.concurrency,
    tenant_concurrency = excluded.tenant_concurrency, rate = excluded.rate,
    rate_window_ms = excluded.rate_window_ms, tenant_rate = excluded.tenant_rate,
    tenant_rate_window_ms = excluded.tenant_rate_window_ms;

-- name: tenant_running
SELECT tenant, running FROM tenants WHERE queue = ? AND tenant != '' AND running > 0
ORDER BY tenant;

-- name: lease_holder
SELECT holder, expires_ms FROM leases WHERE name = ? AND expires_ms > ?;

-- name: lease_put
INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms;

-- name: lease_renew
UPDATE leases SET expires_ms = ? WHERE name = ? AND holder = ? AND expires_ms > ?;

-- name: lease_release
DELETE FROM leases WHERE name = ? AND holder = ? AND expires_ms > ?;

-- name: schedule_put
-- An update keeps the paused flag, the baseline and the last run.
INSERT INTO schedules (name, spec, source, paused, since_ms) VALUES (?, ?, ?, 0, ?)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, source = excluded.source;

-- name: schedules
SELECT name, spec, source, paused, since_ms, last_run_ms, last_error FROM schedules ORDER BY name;

-- name: schedule_delete
DELETE FROM schedules WHERE name = ?;

-- name: schedule_pause
-- Resuming a paused schedule moves its baseline to now (?2).
UPDATE schedules SET since_ms = CASE WHEN paused = 1 AND ?1 = 0 THEN ?2 ELSE since_ms END,
    paused = ?1 WHERE name = ?3;

-- name: schedule_advance
-- A recorded run clears the last error.
UPDATE schedules SET last_run_ms = ?1, last_error = NULL WHERE name = ?2
    AND (last_run_ms IS NULL OR last_run_ms < ?1);

-- name: schedule_error
UPDATE schedules SET last_error = ?1 WHERE name = ?2;

-- name: insert_flow_job
-- One job of a flow (engines/sqlite/flows.py): as insert_job, with its parent link.
INSERT INTO jobs (id, queue, task, payload, state, max_attempts, priority, tenant,
                  dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq,
                  parent_id, flow_policy)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: flow_settle_take
SELECT id, job_id FROM flow_settle ORDER BY id LIMIT 100;

-- name: flow_settle_done
DELETE FROM flow_settle WHERE id <= ?;

-- name: flow_job
SELECT state, parent_id, flow_policy, queue, task, tenant FROM jobs WHERE id = ?;

-- name: flow_children
-- A parent's children in the order they were given (index jobs_parent).
SELECT id, state, flow_policy, task, tenant, attempt FROM jobs WHERE parent_id = ?
ORDER BY rowid;

-- name: flow_holding_children
-- Children that keep a parent waiting: live ones, and (settling runs at the end of the
-- transaction, after every finish in it) a fail_parent child that failed in the same
-- transaction, whose own settling fails the parent.
SELECT count(*) FROM jobs WHERE parent_id = ?
    AND (state IN ('scheduled', 'pending', 'running', 'waiting-children')
         OR (state IN ('failed', 'cancelled') AND flow_policy = 'fail_parent'));

-- name: flow_fail_parent
UPDATE jobs SET state = 'failed', finished_ms = :now, token = NULL, lease_until_ms = NULL,
    errors = json_insert(CASE WHEN json_valid(errors) THEN errors ELSE '[]' END, '$[#]',
                         json(:err))
WHERE id = :id AND state = 'waiting-children';

-- name: flow_release_parent
UPDATE jobs SET state = 'pending', seq = :seq WHERE id = :id AND state = 'waiting-children';

-- name: flow_rearm
-- A failed parent (or a cancelled one below it) waits again (operator retry of one of
-- its children). OR IGNORE: its dedupe key may be held by another live job now.
UPDATE OR IGNORE jobs SET state = 'waiting-children', attempt = 0, finished_ms = NULL,
    result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL
WHERE id = ? AND state IN ('failed', 'cancelled');

-- name: flow_rearm_leaf
-- A childless job its parent's failure cancelled comes back (a re-armed parent): with a
-- fresh attempt budget, at its own due time (scheduled while that is ahead: a delayed
-- child keeps its delay), else pending at the back. OR IGNORE: as retry_row.
UPDATE OR IGNORE jobs SET
    state = CASE WHEN scheduled_ms > :now THEN 'scheduled' ELSE 'pending' END,
    scheduled_ms = CASE WHEN scheduled_ms > :now THEN scheduled_ms END,
    attempt = 0, finished_ms = NULL, result = NULL, token = NULL, lease_until_ms = NULL,
    seq = :seq
WHERE id = :id AND state IN ('failed', 'cancelled');

-- name: flow_live_children
SELECT count(*) FROM jobs WHERE parent_id = ?
    AND state IN ('scheduled', 'pending', 'running', 'waiting-children');

-- name: flow_rewait
-- An operator-retried parent with children to wait for waits again (lifecycle rule 6).
UPDATE jobs SET state = 'waiting-children', scheduled_ms = NULL
WHERE id = ? AND state = 'pending';

-- name: list_waiting
-- Flow parents waiting for their children, newest first (index jobs_waiting).
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'waiting-children' AND (:tenant IS NULL OR tenant = :tenant)
    AND (created_ms, rowid) < (:k1, :k2)
ORDER BY created_ms DESC, rowid DESC LIMIT :n;

-- name: list_waiting_tenant
-- (index jobs_tenant_waiting)
SELECT {job_columns}, rowid FROM jobs
WHERE queue = :queue AND state = 'waiting-children' AND tenant = :tenant
    AND (created_ms, rowid) < (:k1, :k2)
ORDER BY created_ms DESC, rowid DESC LIMIT :n;

-- name: purge_waiting
-- purge: flow parents waiting for their children (index jobs_waiting).
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE queue = ? AND state = 'waiting-children' LIMIT ?);
