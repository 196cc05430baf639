-- Flows: a parent waiting for its children (`waiting-children`) is live, so it holds its
-- dedupe key like a scheduled, pending or running job (lifecycle rule 1: two live jobs
-- never share a key; a retried flow() call, or a plain enqueue with the parent's key,
-- finds the parent). The unique index and `enqueue`'s look-up of the holder learn the
-- fourth live state; `enqueue` is otherwise the function of migration 0005, unchanged.
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
    v_now bigint := {schema}.clock_ms(p_now);
    v_ords bigint[];
    v_states text[];
    r record;
    v_due bigint;
    v_state text;
    v_id text;
    v_hit_id text;
    v_hit_state text;
    v_try integer;
BEGIN
    -- Positions are drawn in input order (a materialised, ordered source), so FIFO
    -- follows the batch; a row's `seq` then names its input position after the INSERT.
    WITH src AS MATERIALIZED (
        SELECT o.ord, o.j, nextval('{schema}.job_seq') AS seq,
            coalesce((o.j->>'run_at_ms')::bigint,
                     v_now + coalesce((o.j->>'delay_ms')::bigint, 0)) AS due
        FROM (SELECT e.ord, e.value AS j
              FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS e(value, ord)
              ORDER BY e.ord) o
    ), ins AS (
        INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state, max_attempts,
            priority, tenant, dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq)
        SELECT s.j->>'id', s.j->>'queue', s.j->>'task', s.j->>'payload',
            CASE WHEN s.due > v_now THEN 'scheduled' ELSE 'pending' END,
            (s.j->>'max_attempts')::integer, coalesce((s.j->>'priority')::integer, 0),
            s.j->>'tenant', s.j->>'dedupe_key', (s.j->>'timeout_ms')::bigint, s.j->>'backoff',
            v_now, CASE WHEN s.due > v_now THEN s.due END, s.seq
        FROM src s ORDER BY s.ord
        ON CONFLICT DO NOTHING
        RETURNING t.id, t.queue, t.task, t.tenant, t.state, t.seq
    ), ev AS (
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
        SELECT i.queue, 'enqueued', i.id, i.task, i.tenant, 0, v_now FROM ins i ORDER BY i.seq
    ), ten AS (
        INSERT INTO {schema}.tenants (queue, tenant)
        SELECT DISTINCT i.queue, i.tenant FROM ins i WHERE i.tenant IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT coalesce(array_agg(s.ord), '{}'), coalesce(array_agg(i.state), '{}')
    INTO v_ords, v_states
    FROM ins i JOIN src s ON s.seq = i.seq;

    FOR r IN SELECT e.value AS j, m.state AS made
             FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS e(value, ord)
             LEFT JOIN unnest(v_ords, v_states) AS m(ord, state) ON m.ord = e.ord
             ORDER BY e.ord LOOP
        IF r.made IS NOT NULL THEN
            job_id := r.j->>'id'; created := true; job_state := r.made;
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- A conflict (same id, or a dedupe key a live job holds) answers with that job.
        -- The holder may finish between the INSERT and the look-up: then try again.
        v_due := coalesce((r.j->>'run_at_ms')::bigint,
                          v_now + coalesce((r.j->>'delay_ms')::bigint, 0));
        v_state := CASE WHEN v_due > v_now THEN 'scheduled' ELSE 'pending' END;
        v_hit_id := NULL;
        FOR v_try IN 1..5 LOOP
            v_id := NULL;
            SELECT h.id, h.state INTO v_hit_id, v_hit_state FROM {schema}.jobs h
                WHERE h.id = r.j->>'id';
            IF v_hit_id IS NULL AND r.j->>'dedupe_key' IS NOT NULL THEN
                SELECT h.id, h.state INTO v_hit_id, v_hit_state FROM {schema}.jobs h
                    WHERE h.queue = r.j->>'queue' AND h.dedupe_key = r.j->>'dedupe_key'
                    AND h.state IN ('scheduled', 'pending', 'running', 'waiting-children');
            END IF;
            EXIT WHEN v_hit_id IS NOT NULL;
            INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state, max_attempts,
                priority, tenant, dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq)
            VALUES (r.j->>'id', r.j->>'queue', r.j->>'task', r.j->>'payload', v_state,
                (r.j->>'max_attempts')::integer, coalesce((r.j->>'priority')::integer, 0),
                r.j->>'tenant', r.j->>'dedupe_key', (r.j->>'timeout_ms')::bigint,
                r.j->>'backoff', v_now, CASE WHEN v_state = 'scheduled' THEN v_due END,
                nextval('{schema}.job_seq'))
            ON CONFLICT DO NOTHING
            RETURNING t.id INTO v_id;
            EXIT WHEN v_id IS NOT NULL;
        END LOOP;
        IF v_id IS NOT NULL THEN
            INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
                VALUES (r.j->>'queue', 'enqueued', v_id, r.j->>'task', r.j->>'tenant', 0, v_now);
            IF r.j->>'tenant' IS NOT NULL THEN
                INSERT INTO {schema}.tenants (queue, tenant)
                    VALUES (r.j->>'queue', r.j->>'tenant') ON CONFLICT DO NOTHING;
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
