-- Migration 0017: a lean statement for the usual single enqueue (issue 16, W0).
--
-- A producer's `await app.enqueue(...)` of a job with no tenant, no dedupe key and no
-- delay (most jobs) called `enqueue(jsonb)`, built for every case: the document parsed
-- and walked (about a dozen `->>` look-ups), then a SELECT of the queue's row, the INSERT
-- of the job, the INSERT of its event and two NOTIFYs, each statement started by the
-- executor on its own. perf on a W0 producer's backend put 46% of its CPU in that
-- function (the rest: the commit's fdatasync ~26%, socket I/O and protocol). Server CPU
-- of the call alone (bench/pg_enqueue_cost.py --functions, 4,000 calls in one DO block):
-- 43 us for `enqueue`, 32 us for `enqueue_one`.
--
-- `enqueue_one` takes the job's columns as typed parameters and stores it in one
-- statement (the queue's row gates it; the job and its event, a data-modifying CTE).
-- What it does not handle it passes, unchanged, to `enqueue`, which answers as before:
--   * a queue with an idle worker registered (`queues.waiting`: the hand-off of 0011/0014,
--     whose commit and flush rules stay with `enqueue` and `take_waiter`),
--   * a queue not known yet (its first job registers it),
--   * an id that exists already (a rerun of the same enqueue): `enqueue` answers with the
--     job that holds it. Only the primary key is the arbiter: with no dedupe key the
--     partial unique index `jobs_dedupe` cannot conflict.
-- The caller (flow.py) sends only jobs without tenant, dedupe key, delay or run_at here.
-- The row, its event, the 'jobs' and 'events' NOTIFYs and the reading of `queues.waiting`
-- are those of `enqueue` for such a job, so its races (0011's header) are unchanged.
--
-- One row back, as OUT parameters rather than a set: a set-returning PL/pgSQL function
-- stores its rows in a tuplestore on every call (about 1-10 us of server CPU here).
--
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

CREATE OR REPLACE FUNCTION {schema}.enqueue_one(p_id text, p_queue text, p_task text,
    p_payload text, p_max_attempts integer, p_priority integer, p_timeout_ms bigint,
    p_backoff text, p_now bigint, OUT job_id text, OUT created boolean, OUT job_state text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now bigint := {schema}.clock_ms(p_now);
    v_made integer;
BEGIN
    -- One statement: the queue's row gates the INSERT (known, no worker waiting), the
    -- job's RETURNING feeds its event. The job is counted through that RETURNING, not
    -- the events INSERT: the `unstreamed_events` trigger (0008) may drop the event.
    WITH ins AS (
        INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state, max_attempts,
            priority, timeout_ms, backoff, created_ms, seq)
        SELECT p_id, p_queue, p_task, p_payload, 'pending', p_max_attempts, p_priority,
            p_timeout_ms, p_backoff, v_now, nextval('{schema}.job_seq')
        FROM {schema}.queues q
        WHERE q.name = p_queue AND q.known AND NOT q.waiting
        ON CONFLICT (id) DO NOTHING
        RETURNING t.id
    ), ev AS (
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
        SELECT p_queue, 'enqueued', ins.id, p_task, NULL, 0, v_now FROM ins
    )
    SELECT count(*) INTO v_made FROM ins;
    IF v_made = 1 THEN
        PERFORM pg_notify({channel}, 'jobs');
        PERFORM pg_notify({channel}, 'events');
        job_id := p_id; created := true; job_state := 'pending';
        RETURN;
    END IF;
    -- Not stored here (a worker waiting, a new queue, the id taken): `enqueue` decides.
    SELECT e.job_id, e.created, e.job_state INTO job_id, created, job_state
    FROM {schema}.enqueue(
        jsonb_build_array(jsonb_build_object('id', p_id, 'queue', p_queue, 'task', p_task,
            'payload', p_payload, 'max_attempts', p_max_attempts, 'priority', p_priority,
            'timeout_ms', p_timeout_ms, 'backoff', p_backoff)), p_now) e;
END
$$;
