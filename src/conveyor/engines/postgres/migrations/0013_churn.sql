-- Migration 0013: W1 that holds up under churn (the same database drained run after run).
-- Measured with bench/pg_w1_cost.py --same-db (bench/RESULTS.md, section "pgchurn"): on
-- a server with autovacuum off (as the shared benchmark server is) each 20,000-job run in
-- the same database cost more server buffers per job (65, 113, 164, 191) and CPU. Two
-- causes, shown by auto_explain of the backends' generic plans:
-- * no table is ever analyzed, so the planner costs every plan from relation sizes alone,
--   and the cached generic plans of the exchange flipped with the sizes of its indexes
--   (grown by dead entries): the outcomes' UPDATE read every job `jobs_lease` lists (all
--   running jobs, plus the dead entries of earlier runs: 60,025 in one call of 25
--   outcomes) and hash-joined them; the claim read all pending jobs through
--   `jobs_pending_age` and sorted them (12,200 rows for a LIMIT 25);
-- * dead tuples and index entries pile up: every claim steps over the dead head of
--   `jobs_claim` (about 100 leaf pages per earlier run of 20,000 jobs) and the lease
--   probe over the dead entries of `jobs_lease`. The purge vacuums them away now
--   (operations.py), and this migration makes the exchange's plans independent of
--   statistics (three statements, below).
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

-- 1. `apply_outcomes` (contract as in 0002 and 0005): the UPDATE finds its jobs by primary
--    key only. `id = ANY(the outcomes' ids)` is costed as ten key probes whatever the
--    table holds, and the running-state check is a join term (`x.from_state`, in a
--    materialized CTE the planner does not see into) rather than `state = 'running'`,
--    which a partial index on running jobs (`jobs_lease`, `jobs_tenant_running`) would
--    match and turn into a scan of every running job. Results are unchanged: the same
--    rows pass the same terms.
CREATE OR REPLACE FUNCTION {schema}.apply_outcomes(p_outcomes jsonb, p_now bigint)
RETURNS TABLE (job_id text, job_queue text, target text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF p_outcomes IS NULL OR jsonb_array_length(p_outcomes) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH x AS MATERIALIZED (
        SELECT o.id, o.token, o.result, o.err, o.data, t.event, t.append_error,
            'running'::text AS from_state,
            t.give_back_attempt, t.clear_started, t.place, t.store_result,
            coalesce(o.delay_ms, 0) AS delay_ms,
            CASE WHEN o.delay_ms > 0 AND t.later_state IS NOT NULL
                 THEN t.later_state ELSE t.state END AS target,
            CASE WHEN o.delay_ms > 0 AND t.later_state IS NOT NULL
                 THEN t.later_finishes ELSE t.finishes END AS finishes
        FROM jsonb_to_recordset(p_outcomes) AS o(id text, token text, kind text,
            result text, err text, delay_ms bigint, data text)
        JOIN {schema}.transitions t ON t.kind = o.kind
    ), u AS (
        UPDATE {schema}.jobs j SET state = x.target, token = NULL, lease_until_ms = NULL,
            scheduled_ms = CASE x.target WHEN 'scheduled' THEN p_now + x.delay_ms
                                         WHEN 'pending' THEN NULL ELSE j.scheduled_ms END,
            seq = CASE WHEN x.target <> 'pending' THEN j.seq
                       WHEN x.place = 'back' THEN nextval('{schema}.job_seq')
                       WHEN x.place = 'front' THEN nextval('{schema}.front_seq')
                       ELSE j.seq END,
            finished_ms = CASE WHEN x.finishes THEN p_now ELSE j.finished_ms END,
            errors = CASE WHEN x.append_error THEN {schema}.append_error(j.errors, x.err)
                          ELSE j.errors END,
            attempt = CASE WHEN x.give_back_attempt THEN greatest(0, j.attempt - 1)
                           ELSE j.attempt END,
            started_ms = CASE WHEN x.clear_started THEN NULL ELSE j.started_ms END,
            result = CASE WHEN x.store_result THEN x.result ELSE j.result END
        FROM x
        WHERE j.id = ANY(ARRAY(SELECT x.id FROM x)) AND j.id = x.id AND j.token = x.token
            AND j.state = x.from_state
        RETURNING j.id, j.queue, j.task, j.tenant, j.attempt, x.event, x.data, x.target
    ), ev AS (
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        SELECT u.queue, u.event, u.id, u.task, u.tenant, u.attempt, p_now, u.data FROM u
    )
    SELECT u.id, u.queue, u.target FROM u;
END
$$;

-- 2. `claim_rows` (contract as in 0012), two statements that each had a second plan:
--    * its SELECT takes the first pending jobs in claim order, which `jobs_claim` (or
--      `jobs_tenant_claim`) returns in that order, so the LIMIT stops after `p_n` rows.
--      Another partial index on pending jobs (`jobs_pending_age`) costs the same when the
--      planner guesses one pending row, and is smaller (its keys deduplicate), so
--      without statistics it won: every claim read and sorted all pending jobs. A sort
--      is never what this function wants (`SET enable_sort = off`);
--    * its UPDATE goes to the locked rows by tuple id. Its state check, written
--      `state = 'pending'`, matched that same partial index, and a bitmap scan of it (the
--      planner guessing two rows) read every pending job and kept the 25 locked ones. The
--      check is written `(state = 'pending') IS TRUE` now (the same for a NOT NULL
--      column), which no partial index matches: the tuple ids are the only way in.
CREATE OR REPLACE FUNCTION {schema}.claim_rows(p_queue text, p_tenant text, p_n integer,
    p_now bigint, p_worker text, p_lease_until bigint)
RETURNS jsonb
LANGUAGE plpgsql
SET enable_sort = off
AS $$
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
        WHERE ctid = ANY(v_tids) AND (state = 'pending') IS TRUE
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
