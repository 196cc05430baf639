-- Migration 0014: a handed job reaches its worker before the enqueue's WAL flush
-- (issue 16, W2's tail).
--
-- With 0011 the hand-off NOTIFY was delivered after the producer's COMMIT had flushed
-- the WAL, so every pickup waited for one fsync, and on a disk other processes share an
-- fsync's tail is milliseconds (bench/RESULTS.md, "pgw2tail": traced W2, the slowest 5%
-- of pickups spent most of their time between the commit record and its flush). Now an
-- enqueue that hands its job over commits without waiting for the flush
-- (`synchronous_commit` off for that transaction only): Postgres delivers the NOTIFY as
-- soon as the commit is recorded, and the engine flushes right after, before `enqueue`
-- returns (`flush_wal` in queries.sql: one small synchronous transaction, whose flush
-- covers every earlier commit, since the WAL is written in order).
--
-- What a producer can rely on is unchanged: `enqueue` returns only once the job is
-- durable (as the server is configured: the flush runs at the session's own
-- `synchronous_commit`). What changes is that the worker may start the job before that
-- flush: if the server crashes in between, the job is gone, and `enqueue` raised (not
-- acknowledged), as when a COMMIT's reply is lost; a rerun of the same enqueue runs it
-- again (at-least-once). The worker's outcome for it cannot outlive it: its commit flushes
-- the WAL in order, so the enqueue is on disk before any outcome of that job is.
--
-- Only the hand-off path changes, and only when a registration is taken: a plain enqueue
-- (W0, a busy fleet), a batch and an enqueue inside a caller's transaction (where
-- `conveyor.handoff` is off and this function is never called) commit as before.
--
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

-- `take_waiter` of 0011 (same contract), and when it returns a registration the calling
-- transaction commits without waiting for its WAL flush (see above; set here, not in
-- `enqueue`, so the setting follows the one decision that hands a job over: a SET LOCAL of
-- another setting than the function's own SET clause lasts to the end of the
-- transaction). Generic plans, as `exchange` in 0012: every statement here has one plan
-- whatever the queue, and each producer session otherwise planned them afresh on its
-- first five hand-offs (~0.3 ms of server CPU each, pg_stat_statements; a W2 run's first
-- jobs).
CREATE OR REPLACE FUNCTION {schema}.take_waiter(p_queue text)
RETURNS {schema}.waiting
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    w {schema}.waiting;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {schema}.waiting WHERE queue = p_queue)  -- the usual case
       OR EXISTS (SELECT 1 FROM {schema}.queue_limits l WHERE l.queue = p_queue)
       OR EXISTS (SELECT 1 FROM {schema}.queues q WHERE q.name = p_queue AND q.paused)
       OR EXISTS (SELECT 1 FROM {schema}.jobs p WHERE p.queue = p_queue
                  AND p.state = 'pending') THEN
        RETURN NULL;
    END IF;
    FOR w IN SELECT * FROM {schema}.waiting WHERE queue = p_queue
             ORDER BY at_ms DESC, worker LIMIT 8 FOR UPDATE SKIP LOCKED LOOP
        IF pg_try_advisory_xact_lock(w.alive) THEN
            -- Taken: nobody holds the key, so that worker's LISTEN session is gone.
            DELETE FROM {schema}.waiting WHERE queue = w.queue AND worker = w.worker;
            CONTINUE;
        END IF;
        IF w.room <= 1 THEN
            DELETE FROM {schema}.waiting WHERE queue = w.queue AND worker = w.worker;
        ELSE
            UPDATE {schema}.waiting SET room = room - 1
                WHERE queue = w.queue AND worker = w.worker;
        END IF;
        -- The NOTIFY goes out at the commit record, not after its flush; the engine
        -- flushes before `enqueue` returns (header of this migration).
        PERFORM set_config('synchronous_commit', 'off', true);
        RETURN w;
    END LOOP;
    UPDATE {schema}.queues SET waiting = false WHERE name = p_queue AND waiting
        AND NOT EXISTS (SELECT 1 FROM {schema}.waiting WHERE queue = p_queue);
    RETURN NULL;
END
$$;

-- `exchange_waiting` (0011, unchanged) with generic plans: its `UPDATE queues SET waiting`
-- was planned on every call (pg_stat_statements, W2: 510 plans in 508 calls, 130 us of
-- server CPU each, on the idle worker's exchange after every job), since its custom plan
-- always looked cheaper than the generic one. Every statement in it has one plan whatever
-- the arguments (primary keys and `waiting_worker`).
ALTER FUNCTION {schema}.exchange_waiting(jsonb, text[], integer, text, bigint, bigint, text,
    bigint, boolean) SET plan_cache_mode = force_generic_plan;
