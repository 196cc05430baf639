-- Migration 0001: the Postgres engine's first schema.
--
-- Applied by `migrations.py` in one transaction under an advisory lock (two processes
-- opening the same schema at once are serialised: the second finds the work done).
-- `{schema}` is the engine's schema (quoted identifier), `{channel}` its NOTIFY
-- channel (a string literal). Never edit an applied migration: add the next number.
--
-- The layout follows the SQLite engine's (same columns, same partial indexes), with
-- three differences that matter under concurrent writers:
-- * no trigger-kept counters: a counter row updated by every state change is a hot row
--   that serialises (and deadlocks) concurrent workers; counts come from the partial
--   indexes instead;
-- * FIFO positions and turns come from sequences, not a counter row, for the same reason;
-- * `rid` (an identity) stands in for SQLite's rowid in keyset cursors.

CREATE TABLE IF NOT EXISTS {schema}.jobs (
    id              text PRIMARY KEY,
    queue           text NOT NULL,
    task            text NOT NULL,
    payload         text NOT NULL,
    state           text NOT NULL,
    attempt         integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 1,
    priority        integer NOT NULL DEFAULT 0,
    tenant          text,
    dedupe_key      text,
    timeout_ms      bigint,
    backoff         text,
    created_ms      bigint NOT NULL,
    scheduled_ms    bigint,
    started_ms      bigint,
    finished_ms     bigint,
    progress        text,
    result          text,
    errors          text,
    token           text,
    worker          text,
    lease_until_ms  bigint,
    seq             bigint NOT NULL,
    rid             bigint GENERATED ALWAYS AS IDENTITY
) WITH (
    -- Every job is updated several times and most are deleted by retention: vacuum
    -- early (2% dead rows instead of 20%) and leave room on each page for HOT updates.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE INDEX IF NOT EXISTS jobs_claim ON {schema}.jobs (queue, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_claim ON {schema}.jobs (queue, tenant, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_order ON {schema}.jobs (queue, priority DESC, seq)
    WHERE state = 'pending' AND tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_pending_age ON {schema}.jobs (queue, created_ms)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_due ON {schema}.jobs (queue, scheduled_ms)
    WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_lease ON {schema}.jobs (queue, lease_until_ms)
    WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_tenant_running ON {schema}.jobs (queue, tenant)
    WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON {schema}.jobs (queue, state, finished_ms)
    WHERE finished_ms IS NOT NULL;
-- A dedupe key belongs to at most one live job per queue.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedupe ON {schema}.jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('scheduled', 'pending', 'running');

CREATE SEQUENCE IF NOT EXISTS {schema}.job_seq;
-- Positions before every job ever queued (Place.FRONT): -1, -2, ...
CREATE SEQUENCE IF NOT EXISTS {schema}.front_seq INCREMENT BY -1 MAXVALUE -1 START WITH -1;
CREATE SEQUENCE IF NOT EXISTS {schema}.turn_seq;

CREATE TABLE IF NOT EXISTS {schema}.queues (
    name    text PRIMARY KEY,
    paused  boolean NOT NULL DEFAULT false,
    known   boolean NOT NULL DEFAULT false
);

-- The bounded event log (trimmed per queue by the engine).
--
-- Readers go by (xid, id), not by id alone: ids come from a sequence when the row is
-- written, so a transaction that commits late can add an id below one a reader has
-- already passed. `xid` is the writing transaction; readers only read rows whose xid
-- is below the oldest transaction still running (`pg_snapshot_xmin`), so every row
-- that can still appear sorts after what was read (a reader's position is "xid-id").
CREATE TABLE IF NOT EXISTS {schema}.events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    queue   text NOT NULL,
    kind    text NOT NULL,
    job_id  text NOT NULL,
    task    text,
    tenant  text,
    attempt integer,
    at_ms   bigint NOT NULL,
    data    text
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS events_queue ON {schema}.events (queue, id);
CREATE INDEX IF NOT EXISTS events_read ON {schema}.events (queue, xid, id);

CREATE TABLE IF NOT EXISTS {schema}.workers (
    id           text PRIMARY KEY,
    info         text NOT NULL,
    last_seen_ms bigint NOT NULL,
    expires_ms   bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema}.leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_ms  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema}.schedules (
    name        text PRIMARY KEY,
    spec        text NOT NULL,
    source      text NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    since_ms    bigint NOT NULL,
    last_run_ms bigint
);

-- The tenants' turns (tenant '' is the bucket of jobs without a tenant). A row is made
-- by the first enqueue of a tenant; claims move it to the back of the rotation.
CREATE TABLE IF NOT EXISTS {schema}.tenants (
    queue   text NOT NULL,
    tenant  text NOT NULL,
    turn    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, tenant)
);
CREATE INDEX IF NOT EXISTS tenants_turn ON {schema}.tenants (queue, turn);

CREATE TABLE IF NOT EXISTS {schema}.queue_limits (
    queue                   text PRIMARY KEY,
    concurrency             integer,
    tenant_concurrency      integer,
    rate                    integer,
    rate_window_ms          integer NOT NULL DEFAULT 1000,
    tenant_rate             integer,
    tenant_rate_window_ms   integer NOT NULL DEFAULT 1000
);

CREATE TABLE IF NOT EXISTS {schema}.rate_log (
    queue   text NOT NULL,
    scope   text NOT NULL,
    at_ms   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_window ON {schema}.rate_log (queue, scope, at_ms);

-- The database clock in epoch milliseconds (leases and due times), or `p_now` when a
-- test drives a fake clock.
CREATE OR REPLACE FUNCTION {schema}.clock_ms(p_now bigint DEFAULT NULL) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(p_now, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
$$;

-- Appends one AttemptError (JSON text) to a job's errors array. A corrupted column
-- starts a fresh array instead of raising: an exception here would wedge every
-- exchange that touches the job.
CREATE OR REPLACE FUNCTION {schema}.append_error(p_errors text, p_err text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    base jsonb;
BEGIN
    IF p_err IS NULL THEN
        RETURN p_errors;
    END IF;
    BEGIN
        base := coalesce(p_errors, '[]')::jsonb;
        IF jsonb_typeof(base) <> 'array' THEN
            base := '[]';
        END IF;
    EXCEPTION WHEN others THEN
        base := '[]';
    END;
    RETURN (base || jsonb_build_array(p_err::jsonb))::text;
END
$$;

-- Enqueue: one call (one round trip) stores a batch of jobs, in input order, inside
-- the caller's transaction, which is what makes `enqueue(..., connection=conn)`
-- transactional: the rows, their events and the NOTIFY that wakes workers all take
-- effect at the caller's COMMIT, and vanish with a ROLLBACK.
-- p_jobs: a JSON array of objects (id, queue, task, payload, max_attempts, priority,
-- tenant, dedupe_key, timeout_ms, backoff, delay_ms, run_at_ms).
-- Returns one row per job: its id (or the id of the live job holding its dedupe key,
-- or of the job that already has its id), whether it was created, and its state.
CREATE OR REPLACE FUNCTION {schema}.enqueue(p_jobs jsonb, p_now bigint DEFAULT NULL)
RETURNS TABLE (job_id text, created boolean, job_state text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j jsonb;
    v_now bigint := {schema}.clock_ms(p_now);
    v_due bigint;
    v_state text;
    v_id text;
    v_hit_id text;
    v_hit_state text;
    v_try integer;
BEGIN
    FOR j IN SELECT value FROM jsonb_array_elements(p_jobs) LOOP
        v_due := coalesce((j->>'run_at_ms')::bigint, v_now + coalesce((j->>'delay_ms')::bigint, 0));
        v_state := CASE WHEN v_due > v_now THEN 'scheduled' ELSE 'pending' END;
        -- A conflict (same id, or a dedupe key a live job holds) answers with that job.
        -- The holder may finish between the INSERT and the look-up: then try again.
        FOR v_try IN 1..5 LOOP
            v_id := NULL;
            INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state, max_attempts,
                priority, tenant, dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq)
            VALUES (j->>'id', j->>'queue', j->>'task', j->>'payload', v_state,
                (j->>'max_attempts')::integer, coalesce((j->>'priority')::integer, 0),
                j->>'tenant', j->>'dedupe_key', (j->>'timeout_ms')::bigint, j->>'backoff',
                v_now, CASE WHEN v_state = 'scheduled' THEN v_due END,
                nextval('{schema}.job_seq'))
            ON CONFLICT DO NOTHING
            RETURNING t.id INTO v_id;
            EXIT WHEN v_id IS NOT NULL;
            SELECT h.id, h.state INTO v_hit_id, v_hit_state FROM {schema}.jobs h
                WHERE h.id = j->>'id';
            IF v_hit_id IS NULL AND j->>'dedupe_key' IS NOT NULL THEN
                SELECT h.id, h.state INTO v_hit_id, v_hit_state FROM {schema}.jobs h
                    WHERE h.queue = j->>'queue' AND h.dedupe_key = j->>'dedupe_key'
                    AND h.state IN ('scheduled', 'pending', 'running');
            END IF;
            EXIT WHEN v_hit_id IS NOT NULL;
        END LOOP;
        IF v_id IS NOT NULL THEN
            INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
                VALUES (j->>'queue', 'enqueued', v_id, j->>'task', j->>'tenant', 0, v_now);
            IF j->>'tenant' IS NOT NULL THEN
                INSERT INTO {schema}.tenants (queue, tenant) VALUES (j->>'queue', j->>'tenant')
                    ON CONFLICT DO NOTHING;
            END IF;
            job_id := v_id; created := true; job_state := v_state;
        ELSE
            job_id := v_hit_id; created := false; job_state := v_hit_state;
        END IF;
        RETURN NEXT;
    END LOOP;
    -- Only queues not yet known are written: an upsert would lock the row and
    -- serialise every enqueue of the queue until the caller's transaction ends.
    INSERT INTO {schema}.queues (name, known)
        SELECT DISTINCT value->>'queue', true FROM jsonb_array_elements(p_jobs)
        WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues q
                          WHERE q.name = value->>'queue' AND q.known)
        ON CONFLICT (name) DO UPDATE SET known = true;
    PERFORM pg_notify({channel}, 'jobs');
    PERFORM pg_notify({channel}, 'events');
END
$$;
