-- Flows: a parent waiting for its children (`waiting-children`) is live, so it holds its
-- dedupe key like a scheduled, pending or running job (lifecycle rule 1: two live jobs
-- never share a key; a retried flow() call, or a plain enqueue with the parent's key,
-- finds the parent). The unique index and `enqueue`'s look-up of the holder learn the
-- fourth live state; `enqueue` is otherwise the function of migration 0001, unchanged.
-- (Whoever rewrites `enqueue` later keeps 'waiting-children' in that look-up: the
-- contract test test_waiting_parent_holds_its_dedupe_key fails without it.)
DROP INDEX IF EXISTS {schema}.jobs_dedupe;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedupe ON {schema}.jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL
        AND state IN ('scheduled', 'pending', 'running', 'waiting-children');

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
                    AND h.state IN ('scheduled', 'pending', 'running', 'waiting-children');
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
