-- Migration 0015: a cheaper bulk enqueue (`enqueue_many`, W0 bulk: 1,000 jobs per call).
-- Measured per job with `bench/pg_enqueue_cost.py --bulk` (server CPU, WAL bytes, client
-- CPU; bench/RESULTS.md, section "pgbulk"). `{schema}` / `{channel}` as in 0001. Written
-- to be applied again safely.
--
-- `enqueue_batch` stores a batch of jobs with the same rows as `enqueue` (0011) for more
-- than one job (each job, its 'enqueued' event, its tenant, its queue), FIFO in input
-- order, in one transaction, with the same answer per job. What changes:
--
-- a. The jobs come as one array per column, sent by the client in binary, not as a JSON
--    document: parsing that document to jsonb cost about 3 us of server CPU per job, and
--    reading its fields back out (`->>`, twelve per job) more. A column whose every job
--    has the same value (the queue, the task, no tenant: most batches) comes as one
--    element (`batch_column`), or as none for NULL.
-- b. A batch without dedupe keys is stored by a plain INSERT, not INSERT ... ON CONFLICT
--    DO NOTHING: a speculative insertion probes the primary key once more per job and
--    writes one more WAL record per job (about 1.5 us per job of server CPU). Its only
--    possible conflict is an id that exists (a fixed id stored again, as a scheduled
--    occurrence's): the INSERT then fails as a whole, its subtransaction is rolled back,
--    and the batch takes (c).
-- c. A batch with dedupe keys, or with an id that exists, goes to `enqueue` as its JSON
--    document, which decides it exactly as before (the answer's `held_*` columns).
-- d. The answer is one row, not one per job: `made` has one letter per job, 'p' (made
--    pending) or 's' (made scheduled), with NULL `held_*`; or, from (c), NULL `made` and
--    `enqueue`'s answer as three arrays in input order (id, created, state).
-- e. The queues are checked once per distinct queue, not once per job.

-- A column of `enqueue_batch`: one value per job, or one value (or none: NULL) for all
-- `p_n` of them, as unnest needs it (it pads a shorter array with NULLs).
CREATE OR REPLACE FUNCTION {schema}.batch_column(p_values anyarray, p_n integer)
RETURNS anyarray
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN cardinality(p_values) = 1 AND p_n > 1
                THEN array_fill(p_values[1], ARRAY[p_n]) ELSE p_values END
$$;

CREATE OR REPLACE FUNCTION {schema}.enqueue_batch(
    p_ids text[], p_payloads text[], p_queues text[], p_tasks text[],
    p_max_attempts integer[], p_priorities integer[], p_tenants text[],
    p_dedupe_keys text[], p_timeouts_ms bigint[], p_backoffs text[], p_delays_ms bigint[],
    p_run_at_ms bigint[], p_now bigint,
    OUT made text, OUT held_ids text[], OUT held_created boolean[], OUT held_states text[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now bigint := {schema}.clock_ms(p_now);
    v_n integer := cardinality(p_ids);
BEGIN
    p_queues := {schema}.batch_column(p_queues, v_n);
    p_tasks := {schema}.batch_column(p_tasks, v_n);
    p_max_attempts := {schema}.batch_column(p_max_attempts, v_n);
    p_priorities := {schema}.batch_column(p_priorities, v_n);
    p_tenants := {schema}.batch_column(p_tenants, v_n);
    p_dedupe_keys := {schema}.batch_column(p_dedupe_keys, v_n);
    p_timeouts_ms := {schema}.batch_column(p_timeouts_ms, v_n);
    p_backoffs := {schema}.batch_column(p_backoffs, v_n);
    p_delays_ms := {schema}.batch_column(p_delays_ms, v_n);
    p_run_at_ms := {schema}.batch_column(p_run_at_ms, v_n);
    IF cardinality(p_payloads) <> v_n OR cardinality(p_queues) <> v_n
       OR cardinality(p_tasks) <> v_n OR cardinality(p_max_attempts) <> v_n THEN
        RAISE EXCEPTION 'enqueue_batch: each of the % jobs needs a payload, a queue, a task '
            'and max_attempts', v_n USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF cardinality(array_remove(p_dedupe_keys, NULL)) = 0 THEN
        BEGIN
            -- Positions drawn in input order (nextval over the ordered rows), so FIFO
            -- follows the batch, and `made` lists the rows by position.
            WITH ins AS (
                INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state,
                    max_attempts, priority, tenant, dedupe_key, timeout_ms, backoff,
                    created_ms, scheduled_ms, seq)
                SELECT x.id, x.queue, x.task, x.payload,
                    CASE WHEN x.due > v_now THEN 'scheduled' ELSE 'pending' END,
                    x.max_attempts, coalesce(x.priority, 0), x.tenant, NULL, x.timeout_ms,
                    x.backoff, v_now, CASE WHEN x.due > v_now THEN x.due END,
                    nextval('{schema}.job_seq')
                FROM (SELECT u.*, coalesce(u.run_at_ms, v_now + coalesce(u.delay_ms, 0)) AS due
                      FROM unnest(p_ids, p_payloads, p_queues, p_tasks, p_max_attempts,
                          p_priorities, p_tenants, p_timeouts_ms, p_backoffs, p_delays_ms,
                          p_run_at_ms) WITH ORDINALITY
                          AS u(id, payload, queue, task, max_attempts, priority, tenant,
                               timeout_ms, backoff, delay_ms, run_at_ms, ord)
                      ORDER BY u.ord) x
                RETURNING t.id, t.queue, t.task, t.tenant, t.state, t.seq
            ), ev AS (
                INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt,
                    at_ms)
                SELECT i.queue, 'enqueued', i.id, i.task, i.tenant, 0, v_now FROM ins i
                ORDER BY i.seq
            ), ten AS (
                INSERT INTO {schema}.tenants (queue, tenant)
                SELECT DISTINCT i.queue, i.tenant FROM ins i WHERE i.tenant IS NOT NULL
                ON CONFLICT DO NOTHING
            )
            SELECT string_agg(CASE i.state WHEN 'pending' THEN 'p' ELSE 's' END, ''
                              ORDER BY i.seq)
            INTO made FROM ins i;
        EXCEPTION WHEN unique_violation THEN
            made := NULL;  -- an id exists: rolled back, decided by `enqueue` below
        END;
    END IF;

    IF made IS NULL THEN
        SELECT array_agg(r.job_id ORDER BY r.k), array_agg(r.created ORDER BY r.k),
               array_agg(r.job_state ORDER BY r.k)
        INTO held_ids, held_created, held_states
        FROM {schema}.enqueue((
            SELECT jsonb_agg(jsonb_build_object('id', x.id, 'queue', x.queue,
                'task', x.task, 'payload', x.payload, 'max_attempts', x.max_attempts,
                'priority', x.priority, 'tenant', x.tenant, 'dedupe_key', x.dedupe_key,
                'timeout_ms', x.timeout_ms, 'backoff', x.backoff, 'delay_ms', x.delay_ms,
                'run_at_ms', x.run_at_ms) ORDER BY x.ord)
            FROM unnest(p_ids, p_payloads, p_queues, p_tasks, p_max_attempts, p_priorities,
                p_tenants, p_dedupe_keys, p_timeouts_ms, p_backoffs, p_delays_ms,
                p_run_at_ms) WITH ORDINALITY
                AS x(id, payload, queue, task, max_attempts, priority, tenant, dedupe_key,
                     timeout_ms, backoff, delay_ms, run_at_ms, ord)), v_now)
            WITH ORDINALITY AS r(job_id, created, job_state, k);
        RETURN;  -- `enqueue` registered the queues and sent the NOTIFYs
    END IF;

    -- Only queues not yet known are written (see `enqueue`), probed once per queue.
    IF EXISTS (SELECT 1 FROM (SELECT DISTINCT q.name FROM unnest(p_queues) AS q(name)) d
               WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues k
                                 WHERE k.name = d.name AND k.known)) THEN
        INSERT INTO {schema}.queues (name, known)
            SELECT DISTINCT q.name, true FROM unnest(p_queues) AS q(name)
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues k
                              WHERE k.name = q.name AND k.known)
            ON CONFLICT (name) DO UPDATE SET known = true;
    END IF;
    PERFORM pg_notify({channel}, 'jobs');
    PERFORM pg_notify({channel}, 'events');
END
$$;
