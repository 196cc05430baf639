-- Migration 0012: a leaner worker exchange (W1: pre-enqueued jobs drained by one worker).
-- Measured per job with bench/pg_w1_cost.py (server statements, rows, WAL bytes and
-- backend CPU; bench/RESULTS.md, section "pgw1"). Same contracts as 0002; `{schema}` /
-- `{channel}` as in 0001. Written to be applied again safely.
--
-- 1. Events carry two indexes instead of three. Every job writes three event rows
--    (enqueued, started, finished), and each row paid an entry in every index: the
--    primary key on `id` was read by nothing (readers go by `events_xid`, the trim by
--    `events_queue`, whose (queue, id) also orders ids), so it goes; `id` keeps its
--    identity sequence. Vacuum after 5% new rows (not 20%), so the trim's backward scan of
--    `events_queue` finds pages marked all-visible sooner.
ALTER TABLE {schema}.events DROP CONSTRAINT IF EXISTS events_pkey;
ALTER TABLE {schema}.events SET (autovacuum_vacuum_insert_scale_factor = 0.05);

-- 2. A claim writes one index entry less for a job without a tenant: the index of running
--    jobs by tenant (read to count a tenant's running jobs, `tenant = ...`, which implies
--    the new predicate) no longer lists jobs that have none. A queue's running count reads
--    `jobs_lease`, which lists every running job.
DROP INDEX IF EXISTS {schema}.jobs_tenant_running;
CREATE INDEX IF NOT EXISTS jobs_tenant_running ON {schema}.jobs (queue, tenant)
    WHERE state = 'running' AND tenant IS NOT NULL;

-- 3. `claim_rows` (contract as in 0002): the rows locked by the SKIP LOCKED select are
--    updated by their tuple id (a TID scan), not looked up again by primary key (a bitmap
--    scan of `jobs_pkey`, one text descent per job). A row locked FOR UPDATE cannot move
--    before this transaction's own UPDATE, so the tuple id the lock returned is the row's.
CREATE OR REPLACE FUNCTION {schema}.claim_rows(p_queue text, p_tenant text, p_n integer,
    p_now bigint, p_worker text, p_lease_until bigint)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_rows jsonb;
    v_tids tid[];
BEGIN
    IF p_n <= 0 THEN
        RETURN '[]';
    END IF;
    -- Two statements, one per claim index (a partial index needs its literal terms).
    IF p_tenant IS NULL THEN
        SELECT array_agg(s.ctid) INTO v_tids FROM (
            SELECT ctid FROM {schema}.jobs WHERE queue = p_queue AND state = 'pending'
                AND tenant IS NULL
            ORDER BY priority DESC, seq LIMIT p_n FOR UPDATE SKIP LOCKED) s;
    ELSE
        SELECT array_agg(s.ctid) INTO v_tids FROM (
            SELECT ctid FROM {schema}.jobs WHERE queue = p_queue AND state = 'pending'
                AND tenant IS NOT NULL AND tenant = p_tenant
            ORDER BY priority DESC, seq LIMIT p_n FOR UPDATE SKIP LOCKED) s;
    END IF;
    IF v_tids IS NULL THEN
        RETURN '[]';
    END IF;
    WITH c AS (
        UPDATE {schema}.jobs SET state = 'running', attempt = attempt + 1,
            token = replace(gen_random_uuid()::text, '-', ''), started_ms = p_now,
            worker = p_worker, lease_until_ms = p_lease_until
        WHERE ctid = ANY(v_tids) AND state = 'pending'
        RETURNING *
    ), ev AS (
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
        SELECT c.queue, 'started', c.id, c.task, c.tenant, c.attempt, p_now FROM c
    )
    SELECT coalesce(jsonb_agg(jsonb_build_array(c.id, c.queue, c.task, c.payload, c.state,
        c.attempt, c.max_attempts, c.priority, c.tenant, c.dedupe_key, c.timeout_ms,
        c.backoff, c.created_ms, c.scheduled_ms, c.started_ms, c.finished_ms, c.progress,
        c.result, c.errors, c.token, c.worker, c.lease_until_ms, c.seq)
        ORDER BY c.priority DESC, c.seq), '[]')
    INTO v_rows FROM c;
    RETURN v_rows;
END
$$;

-- 4. `exchange` (contract as in 0002), with generic plans for every statement it runs
--    (nested functions included): PL/pgSQL's plan cache otherwise settles per statement
--    and per connection, from its first five calls, between a plan made for each call's
--    values and one generic plan, so whether a backend re-plans the claim and the
--    outcomes on every exchange depended on the statistics the table had during those
--    first calls (in one measured run the claim's SELECT was planned 806 times in 803
--    calls; in the next, 37 times). Every statement here has a plan that does not depend
--    on the values (the same partial indexes and primary key). Then, per queue, one probe of two partial indexes
--    (`jobs_due`, `jobs_lease`) decides whether promotion and lease recovery have anything
--    to do; in the common case (nothing due, no lease expired) neither the promoting
--    UPDATE nor `recover` (a function scan that reads the rules and builds a JSON
--    document) runs. Both still run, as before, whenever the probe finds work; a job that
--    becomes due or expires after the probe is taken by the next exchange, as one that
--    became due just after the UPDATE was before.
CREATE OR REPLACE FUNCTION {schema}.exchange(p_outcomes jsonb, p_queues text[],
    p_limit integer, p_worker text, p_lease_ms bigint, p_now bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_now bigint := {schema}.clock_ms(p_now);
    v_slotted text[];
    v_paused text[];
    v_done text[] := '{}';
    v_woke boolean := false;
    v_events integer := 0;
    v_jobs jsonb := '[]';
    v_got jsonb;
    v_claimed integer := 0;
    v_recovered integer := 0;
    v_stalled integer;
    v_failed integer;
    v_hint bigint;
    v_fair_hint bigint;
    v_due bigint;
    v_promote integer;
    v_has_due boolean;
    v_has_expired boolean;
    q text;
BEGIN
    SELECT coalesce(array_agg(queue), '{}') INTO v_slotted FROM {schema}.queue_limits
        WHERE concurrency IS NOT NULL OR tenant_concurrency IS NOT NULL;
    IF jsonb_array_length(p_outcomes) > 0 THEN
        -- Work is ready when a job goes back to pending, or a job of a queue with a
        -- concurrency limit stops running (it frees a slot).
        SELECT coalesce(array_agg(a.job_id), '{}'),
               coalesce(bool_or(a.target = 'pending' OR a.job_queue = ANY(v_slotted)), false),
               count(*)
        INTO v_done, v_woke, v_events FROM {schema}.apply_outcomes(p_outcomes, v_now) a;
    END IF;
    IF p_limit > 0 THEN
        SELECT coalesce(array_agg(name), '{}') INTO v_paused FROM {schema}.queues WHERE paused;
        SELECT value::integer INTO v_promote FROM {schema}.rules WHERE name = 'promote_batch';
        FOREACH q IN ARRAY p_queues LOOP
            SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE queue = q AND state = 'scheduled'
                               AND scheduled_ms <= v_now),
                   EXISTS (SELECT 1 FROM {schema}.jobs WHERE queue = q AND state = 'running'
                               AND lease_until_ms <= v_now)
            INTO v_has_due, v_has_expired;
            IF v_has_due THEN
                -- Due jobs join the back of the line oldest due first, and jobs due in the
                -- same millisecond in enqueue order: positions are drawn over the ordered
                -- rows, not in whatever order the UPDATE meets them.
                UPDATE {schema}.jobs j SET state = 'pending', scheduled_ms = NULL, seq = d.pos
                FROM (SELECT o.id, nextval('{schema}.job_seq') AS pos FROM (
                        SELECT id FROM {schema}.jobs WHERE queue = q AND state = 'scheduled'
                            AND scheduled_ms <= v_now ORDER BY scheduled_ms, seq
                            LIMIT v_promote FOR UPDATE SKIP LOCKED) o) d
                WHERE j.id = d.id;
            END IF;
            IF v_has_expired THEN
                SELECT r.stalled, r.failed INTO v_stalled, v_failed
                    FROM {schema}.recover(q, v_now) r;
                v_recovered := v_recovered + v_stalled + v_failed;
                v_events := v_events + v_stalled + v_failed;
                v_woke := v_woke OR v_stalled > 0 OR (v_failed > 0 AND q = ANY(v_slotted));
            END IF;
            CONTINUE WHEN q = ANY(v_paused) OR v_claimed >= p_limit;
            IF NOT EXISTS (SELECT 1 FROM {schema}.queue_limits l WHERE l.queue = q)
               AND NOT EXISTS (SELECT 1 FROM {schema}.jobs p WHERE p.queue = q
                               AND p.state = 'pending' AND p.tenant IS NOT NULL) THEN
                -- The common case: the best jobs are simply the first ones, and
                -- claimers of the fleet do not wait on each other.
                v_got := {schema}.claim_rows(q, NULL, p_limit - v_claimed, v_now, p_worker,
                                             v_now + p_lease_ms);
            ELSE
                SELECT f.got, f.hint INTO v_got, v_fair_hint FROM {schema}.claim_fair(
                    q, p_limit - v_claimed, v_now, p_worker, v_now + p_lease_ms) f;
                v_hint := least(v_hint, v_fair_hint);
            END IF;
            v_claimed := v_claimed + jsonb_array_length(v_got);
            v_events := v_events + jsonb_array_length(v_got);
            v_jobs := v_jobs || v_got;
        END LOOP;
    END IF;
    SELECT min(scheduled_ms) - v_now INTO v_due FROM {schema}.jobs
        WHERE queue = ANY(p_queues) AND state = 'scheduled';
    IF v_due IS NOT NULL AND v_due < 0 THEN
        v_due := 0;
    END IF;
    IF v_hint IS NOT NULL AND (v_due IS NULL OR v_hint < v_due) THEN
        v_due := v_hint;
    END IF;
    IF v_woke THEN
        PERFORM pg_notify({channel}, 'jobs');
    END IF;
    IF v_events > 0 THEN
        PERFORM pg_notify({channel}, 'events');
    END IF;
    RETURN jsonb_build_object('jobs', v_jobs, 'done', to_jsonb(v_done), 'next_due', v_due,
        'recovered', v_recovered, 'woke', v_woke, 'events', v_events)::text;
END
$$;
