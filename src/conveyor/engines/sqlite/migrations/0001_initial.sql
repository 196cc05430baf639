-- Migration 0001: the schema as Conveyor 0.x shipped it (PRAGMA user_version 3).
--
-- Applied by `migrations.py` inside one BEGIN IMMEDIATE transaction. A file made before
-- numbered migrations existed at user_version 3 already has this schema and is only
-- recorded as having it; at user_version 1 or 2 it gets this script, whose statements
-- are idempotent (IF NOT EXISTS / OR IGNORE / ON CONFLICT) so it upgrades such a file
-- in place. Never edit an applied migration: add the next number.
--
-- Index design: every query the engine runs names one queue and (almost always) one
-- state, so indices lead with `queue`. Most are partial (WHERE state = ...): a job
-- is in exactly one state, so it sits only in the indices of that state, which keeps
-- each state change to a couple of B-tree edits and keeps 100,000 completed jobs out
-- of the claim path entirely. Queries against a partial index must repeat its WHERE
-- term as a literal (SQLite proves usability at prepare time, not from parameters).

CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    queue           TEXT NOT NULL,
    task            TEXT NOT NULL,
    payload         TEXT NOT NULL,           -- JSON object text
    state           TEXT NOT NULL,           -- scheduled|pending|running|completed|failed|cancelled
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 1,
    priority        INTEGER NOT NULL DEFAULT 0,
    tenant          TEXT,
    dedupe_key      TEXT,
    timeout_ms      INTEGER,
    backoff         TEXT,                    -- JSON policy spec or NULL
    created_ms      INTEGER NOT NULL,
    scheduled_ms    INTEGER,                 -- due time while scheduled
    started_ms      INTEGER,
    finished_ms     INTEGER,                 -- set exactly when state is finished
    progress        TEXT,                    -- JSON
    result          TEXT,                    -- JSON
    errors          TEXT,                    -- JSON array of AttemptError objects
    token           TEXT,                    -- lease token while running
    worker          TEXT,
    lease_until_ms  INTEGER,
    seq             INTEGER NOT NULL         -- FIFO position within a priority; released
                                             -- jobs get negative values (front of line)
);

-- Claim order of the jobs without a tenant: highest priority first, FIFO within a
-- priority (pending only). Tenant jobs have their own two indices (version 3, at the
-- end), so every pending job sits in exactly one claim index and a queue without
-- tenants pays nothing for fairness. Version 3 narrowed this index to tenant IS NULL:
-- the DROP turns an older file's index into the new one (and is harmless on a fresh
-- file, or when two processes upgrade the same file one after the other).
DROP INDEX IF EXISTS jobs_claim;
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (queue, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NULL;
-- Age of the oldest pending job (counts) without scanning the backlog.
CREATE INDEX IF NOT EXISTS jobs_pending_age ON jobs (queue, created_ms)
    WHERE state = 'pending';
-- Due times: promotion, next_due_ms and the scheduled listing.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, scheduled_ms)
    WHERE state = 'scheduled';
-- Lease deadlines: expired-lease recovery and the running listing.
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (queue, lease_until_ms)
    WHERE state = 'running';
-- Finished jobs newest first (listings, retry_all) and oldest first (clean).
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (queue, state, finished_ms)
    WHERE finished_ms IS NOT NULL;
-- A dedupe key belongs to at most one active job per queue; leaving the active
-- states releases it automatically because the row drops out of this index.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedupe ON jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('scheduled', 'pending', 'running');

-- Depth per state, kept exact by triggers so `counts` is O(1) however many
-- finished jobs a queue keeps (COUNT(*) over an index is O(rows)).
CREATE TABLE IF NOT EXISTS queue_counts (
    queue   TEXT NOT NULL,
    state   TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO queue_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state
BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
    INSERT INTO queue_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs
BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;

-- Queues: `known` = has ever held a job (queue_names); pausing an unknown name
-- records the flag without making the queue appear in listings.
CREATE TABLE IF NOT EXISTS queues (
    name    TEXT PRIMARY KEY,
    paused  INTEGER NOT NULL DEFAULT 0,
    known   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The bounded event log. AUTOINCREMENT so ids are never reused after trimming:
-- readers hand ids back as `since`, and a reused id would skip or repeat events.
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    queue   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    job_id  TEXT NOT NULL,
    task    TEXT,
    tenant  TEXT,
    attempt INTEGER,
    at_ms   INTEGER NOT NULL,
    data    TEXT                             -- JSON object or NULL
);
CREATE INDEX IF NOT EXISTS events_queue ON events (queue, id);

CREATE TABLE IF NOT EXISTS workers (
    id          TEXT PRIMARY KEY,
    info        TEXT NOT NULL,               -- JSON object
    last_seen_ms INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- Counters: `seq` grows for every job that joins the back of a line; `front` shrinks
-- for jobs released at graceful shutdown, so they are claimed before everything else.
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0), ('front', 0);

-- Version 2: the scheduler. Named leases (the scheduler's leadership): one row per lease;
-- a row whose expires_ms has passed is free. Every check-then-set runs in one
-- BEGIN IMMEDIATE transaction, which is what makes acquiring one atomic.
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- Recurring schedules: code-defined ones are upserted by each scheduler at start,
-- runtime ones by `conveyor schedules add`. since_ms = occurrences after it are owed
-- (created or last resumed); last_run_ms = latest occurrence enqueued (leader only).
CREATE TABLE IF NOT EXISTS schedules (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,               -- ScheduleSpec as JSON
    source      TEXT NOT NULL,               -- code | runtime
    paused      INTEGER NOT NULL DEFAULT 0,
    since_ms    INTEGER NOT NULL,
    last_run_ms INTEGER
) WITHOUT ROWID;

-- Version 3: fairness and limits (see flow.py, `_claim_fair`, for how claims use them).
-- A tenant's pending jobs in claim order: the tenant's best job is one index search.
CREATE INDEX IF NOT EXISTS jobs_tenant_claim ON jobs (queue, tenant, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NOT NULL;
-- Every tenant's pending jobs in the queue's priority/FIFO order (listings merge it
-- with jobs_claim).
CREATE INDEX IF NOT EXISTS jobs_tenant_order ON jobs (queue, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NOT NULL;

-- One row per (queue, tenant): pending and running counts kept exact by triggers (only
-- rows of jobs that have a tenant fire them), and `turn`, when the tenant was last
-- served: claims serve the least recently served tenant first. The row with tenant ''
-- only holds the turn of the queue's jobs without a tenant (tenant names are never
-- empty), so those jobs, which fire no trigger, take turns as one more bucket.
CREATE TABLE IF NOT EXISTS tenants (
    queue   TEXT NOT NULL,
    tenant  TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0,
    turn    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, tenant)
) WITHOUT ROWID;
-- The rotation: tenants with pending jobs, least recently served first.
CREATE INDEX IF NOT EXISTS tenants_ready ON tenants (queue, turn) WHERE pending > 0;

CREATE TRIGGER IF NOT EXISTS jobs_tenant_insert AFTER INSERT ON jobs
    WHEN new.tenant IS NOT NULL AND new.state IN ('pending', 'running')
BEGIN
    INSERT INTO tenants (queue, tenant, pending, running)
        VALUES (new.queue, new.tenant, new.state = 'pending', new.state = 'running')
        ON CONFLICT (queue, tenant) DO UPDATE SET
            pending = pending + excluded.pending, running = running + excluded.running;
END;

CREATE TRIGGER IF NOT EXISTS jobs_tenant_update AFTER UPDATE OF state ON jobs
    WHEN new.tenant IS NOT NULL AND old.state IS NOT new.state
        AND (old.state IN ('pending', 'running') OR new.state IN ('pending', 'running'))
BEGIN
    INSERT INTO tenants (queue, tenant, pending, running)
        VALUES (new.queue, new.tenant,
                (new.state = 'pending') - (old.state = 'pending'),
                (new.state = 'running') - (old.state = 'running'))
        ON CONFLICT (queue, tenant) DO UPDATE SET
            pending = pending + excluded.pending, running = running + excluded.running;
END;

CREATE TRIGGER IF NOT EXISTS jobs_tenant_delete AFTER DELETE ON jobs
    WHEN old.tenant IS NOT NULL AND old.state IN ('pending', 'running')
BEGIN
    UPDATE tenants SET pending = pending - (old.state = 'pending'),
                       running = running - (old.state = 'running')
        WHERE queue = old.queue AND tenant = old.tenant;
END;

-- A file upgraded from version 2 may hold tenant jobs already: count them once (a
-- second process running this script finds the rows and leaves them alone).
INSERT INTO tenants (queue, tenant, pending, running)
    SELECT queue, tenant, sum(state = 'pending'), sum(state = 'running') FROM jobs
        WHERE tenant IS NOT NULL AND state IN ('pending', 'running')
        GROUP BY queue, tenant
    ON CONFLICT (queue, tenant) DO NOTHING;

-- Per-queue limits (NULL = no limit), read by every claim.
CREATE TABLE IF NOT EXISTS queue_limits (
    queue                   TEXT PRIMARY KEY,
    concurrency             INTEGER,
    tenant_concurrency      INTEGER,
    rate                    INTEGER,
    rate_window_ms          INTEGER NOT NULL DEFAULT 1000,
    tenant_rate             INTEGER,
    tenant_rate_window_ms   INTEGER NOT NULL DEFAULT 1000
) WITHOUT ROWID;

-- Start times inside the current rate window (a sliding-window log): scope '' is the
-- queue-wide rate, otherwise a tenant's. Rows are written only for queues with a rate
-- limit and deleted once they leave the window.
CREATE TABLE IF NOT EXISTS rate_log (
    queue   TEXT NOT NULL,
    scope   TEXT NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_window ON rate_log (queue, scope, at_ms);

INSERT OR IGNORE INTO meta (key, value) VALUES ('turn', 0);
