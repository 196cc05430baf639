-- Migration 0011: one-hop pickup. An idle worker gets its next job in the NOTIFY that
-- wakes it, instead of a wake-up followed by a claim (issue 16, W2).
--
--   worker:   exchange_waiting: nothing claimed -> a row in `waiting`     (listening)
--   producer: enqueue: takes that row, stores the job already claimed for the worker,
--             pg_notify(worker's channel, the job row)    -> at COMMIT the worker starts it
--
-- The rules are those of the Redis engine's pickup (lua/_pickup.lua). A worker registers
-- when its claim got fewer jobs than it asked for (the queues are drained), for as many
-- jobs as it had room left, on queues with no limits row and not paused; an
-- enqueue hands its job over only when it is one job, due now, without a tenant, on a
-- queue that still has no limits, is not paused and has nothing pending (so the job is
-- the one the next claim would take anyway), and not inside a caller's own transaction
-- (`enqueue_in` sets `conveyor.handoff` off: a lease must not start before a COMMIT that
-- may come much later). Everything else goes through pending and the 'jobs' NOTIFY as
-- before, so fairness, limits and rates are untouched. A handed job is claimed exactly as
-- `claim_rows` claims (running, attempt + 1, token, lease, `started` event), so leases,
-- fencing and lease recovery hold for it as for any claimed job.
--
-- Liveness: a registration names an advisory lock key that the worker's LISTEN session
-- holds (`alive`). A lock that can be taken means that session is gone (the process died,
-- or its listener reconnected under a new key): the registration is dropped and the next
-- one tried, so a dead worker is never handed a job. A job handed in the instant between
-- a worker's death and its session's end is recovered when its lease expires, as any job
-- claimed by a worker that died. Handed tokens start with 'h' (`handed_to`): a worker
-- whose listener lost notifications finds the jobs handed to it in the table.
--
-- Races (READ COMMITTED):
--   * producer P finds no registration because worker W's is not committed yet: P's job
--     is pending and P's 'jobs' NOTIFY wakes W, whose next claim takes it (W recorded its
--     wake-up generation before the claim; flow.py).
--   * two producers and one registration: FOR UPDATE SKIP LOCKED, one takes it, the other
--     stores its job pending (and NOTIFYs 'jobs').
--   * W's next exchange drops its registrations while P holds one: that DELETE skips
--     locked rows (SKIP LOCKED), so a claim never waits for a producer's commit.
--
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

CREATE TABLE IF NOT EXISTS {schema}.waiting (
    queue     text NOT NULL,
    worker    text NOT NULL,
    lease_ms  bigint NOT NULL,
    channel   text NOT NULL,    -- the worker's LISTEN session's hand-off channel
    alive     bigint NOT NULL,  -- advisory lock key that session holds
    at_ms     bigint NOT NULL,  -- registered (the newest registration is served first)
    room      integer NOT NULL, -- jobs it may still be handed (its free slots)
    PRIMARY KEY (queue, worker)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
CREATE INDEX IF NOT EXISTS waiting_worker ON {schema}.waiting (worker);
-- Whether `waiting` may hold a registration for the queue: read with the queue's row that
-- `enqueue` reads anyway, so a producer with no worker waiting (W0, a busy fleet) pays no
-- query for the hand-off (a probe of `waiting` was ~20 us of server CPU per enqueue). Set
-- by a registering worker, reset by a producer that found none; a registration that lost
-- the flag to that race only goes through pending until its worker's next claim sets it.
ALTER TABLE {schema}.queues ADD COLUMN IF NOT EXISTS waiting boolean NOT NULL DEFAULT false;

-- The live registration of `p_queue` to hand a job to, taken out of `waiting` (the row
-- stays locked until COMMIT), or NULL when there is none or the queue is not open for a
-- hand-off. Dead registrations met on the way are deleted.
CREATE OR REPLACE FUNCTION {schema}.take_waiter(p_queue text)
RETURNS {schema}.waiting
LANGUAGE plpgsql AS $$
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
        RETURN w;
    END LOOP;
    UPDATE {schema}.queues SET waiting = false WHERE name = p_queue AND waiting
        AND NOT EXISTS (SELECT 1 FROM {schema}.waiting WHERE queue = p_queue);
    RETURN NULL;
END
$$;

-- `enqueue` of 0010 with the hand-off: an idle worker registered on the queue of a
-- one-job enqueue gets the job claimed for it and NOTIFYed to its channel; the 'jobs'
-- NOTIFY is then not sent (nobody else need wake). Everything else as in 0010.
CREATE OR REPLACE FUNCTION {schema}.enqueue(p_jobs jsonb, p_now bigint DEFAULT NULL)
RETURNS TABLE (job_id text, created boolean, job_state text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now bigint := {schema}.clock_ms(p_now);
    v_n integer := jsonb_array_length(p_jobs);
    v_made text[] := '{}';  -- per input position: the state it was made in, or NULL
    v_all_made boolean := false;
    v_i integer;
    j jsonb;
    v_due bigint;
    v_state text;
    v_id text;
    v_hit_id text;
    v_hit_state text;
    v_try integer;
    v_w {schema}.waiting;   -- the idle worker this job is handed to (0011), or NULL
    v_token text;
    v_row jsonb;
    v_known boolean;
    v_waiting boolean;
BEGIN
    IF v_n > 1 THEN
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
                priority, tenant, dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms,
                seq)
            SELECT s.j->>'id', s.j->>'queue', s.j->>'task', s.j->>'payload',
                CASE WHEN s.due > v_now THEN 'scheduled' ELSE 'pending' END,
                (s.j->>'max_attempts')::integer, coalesce((s.j->>'priority')::integer, 0),
                s.j->>'tenant', s.j->>'dedupe_key', (s.j->>'timeout_ms')::bigint,
                s.j->>'backoff', v_now, CASE WHEN s.due > v_now THEN s.due END, s.seq
            FROM src s ORDER BY s.ord
            ON CONFLICT DO NOTHING
            RETURNING t.id, t.queue, t.task, t.tenant, t.state, t.seq
        ), ev AS (
            INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
            SELECT i.queue, 'enqueued', i.id, i.task, i.tenant, 0, v_now FROM ins i
            ORDER BY i.seq
        ), ten AS (
            INSERT INTO {schema}.tenants (queue, tenant)
            SELECT DISTINCT i.queue, i.tenant FROM ins i WHERE i.tenant IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        SELECT array_agg(i.state ORDER BY s.ord), count(i.state) = v_n
        INTO v_made, v_all_made
        FROM src s LEFT JOIN ins i ON i.seq = s.seq;
    END IF;

    -- One job due now, without a tenant, with an idle worker registered on its queue
    -- (`queues.waiting`: no worker waiting is the usual case of a busy producer), and
    -- not in a caller's transaction: hand it over (the header of this migration).
    IF v_n = 1 THEN
        SELECT q.known, q.waiting INTO v_known, v_waiting FROM {schema}.queues q
            WHERE q.name = p_jobs->0->>'queue';
    END IF;
    IF v_waiting THEN  -- alone: the usual enqueue evaluates nothing more
        IF p_jobs->0->>'tenant' IS NULL
           AND coalesce(current_setting('conveyor.handoff', true), '') <> 'off'
           AND coalesce((p_jobs->0->>'run_at_ms')::bigint,
                        v_now + coalesce((p_jobs->0->>'delay_ms')::bigint, 0)) <= v_now THEN
            v_w := {schema}.take_waiter(p_jobs->0->>'queue');
            IF v_w.worker IS NOT NULL THEN
                v_token := 'h' || replace(gen_random_uuid()::text, '-', '');
            END IF;
        END IF;
    END IF;

    IF v_all_made THEN
        RETURN QUERY SELECT p_jobs -> (m.ord - 1)::integer ->> 'id', true, m.state
            FROM unnest(v_made) WITH ORDINALITY AS m(state, ord) ORDER BY m.ord;
    ELSE
        -- By input position (no query to walk the document: the per-job path of a
        -- one-job batch is its INSERT, its event and nothing else).
        FOR v_i IN 1..v_n LOOP
            j := p_jobs -> (v_i - 1);
            IF v_made[v_i] IS NOT NULL THEN
                job_id := j->>'id'; created := true; job_state := v_made[v_i];
                RETURN NEXT;
                CONTINUE;
            END IF;
            -- Insert, or answer with the job that holds the id or the dedupe key (a
            -- conflict). The holder may finish between the INSERT and the look-up:
            -- then try again.
            v_due := coalesce((j->>'run_at_ms')::bigint,
                              v_now + coalesce((j->>'delay_ms')::bigint, 0));
            v_state := CASE WHEN v_due > v_now THEN 'scheduled' ELSE 'pending' END;
            v_hit_id := NULL;
            FOR v_try IN 1..5 LOOP
                v_id := NULL;
                IF v_token IS NULL THEN
                    INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state,
                        max_attempts, priority, tenant, dedupe_key, timeout_ms, backoff,
                        created_ms, scheduled_ms, seq)
                    VALUES (j->>'id', j->>'queue', j->>'task', j->>'payload', v_state,
                        (j->>'max_attempts')::integer, coalesce((j->>'priority')::integer, 0),
                        j->>'tenant', j->>'dedupe_key', (j->>'timeout_ms')::bigint,
                        j->>'backoff', v_now, CASE WHEN v_state = 'scheduled' THEN v_due END,
                        nextval('{schema}.job_seq'))
                    ON CONFLICT DO NOTHING
                    RETURNING t.id INTO v_id;
                ELSE  -- handed: stored claimed, as claim_rows claims (a statement of its
                      -- own: the extra columns cost the usual enqueue ~20 us, measured)
                    INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state,
                        max_attempts, priority, tenant, dedupe_key, timeout_ms, backoff,
                        created_ms, seq, attempt, token, started_ms, worker, lease_until_ms)
                    VALUES (j->>'id', j->>'queue', j->>'task', j->>'payload', 'running',
                        (j->>'max_attempts')::integer, coalesce((j->>'priority')::integer, 0),
                        NULL, j->>'dedupe_key', (j->>'timeout_ms')::bigint, j->>'backoff',
                        v_now, nextval('{schema}.job_seq'), 1, v_token, v_now, v_w.worker,
                        v_now + v_w.lease_ms)
                    ON CONFLICT DO NOTHING
                    RETURNING t.id, jsonb_build_array(t.id, t.queue, t.task, t.payload,
                        t.state, t.attempt, t.max_attempts, t.priority, t.tenant,
                        t.dedupe_key, t.timeout_ms, t.backoff, t.created_ms, t.scheduled_ms,
                        t.started_ms, t.finished_ms, t.progress, t.result, t.errors, t.token,
                        t.worker, t.lease_until_ms, t.seq)
                    INTO v_id, v_row;
                END IF;
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
                    VALUES (j->>'queue', 'enqueued', v_id, j->>'task', j->>'tenant', 0,
                            v_now);
                IF j->>'tenant' IS NOT NULL THEN
                    INSERT INTO {schema}.tenants (queue, tenant)
                        VALUES (j->>'queue', j->>'tenant') ON CONFLICT DO NOTHING;
                END IF;
                job_id := v_id; created := true; job_state := v_state;
                IF v_token IS NOT NULL THEN
                    INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt,
                        at_ms) VALUES (j->>'queue', 'started', v_id, j->>'task', NULL, 1, v_now);
                    -- The row itself when it fits a NOTIFY (8000 bytes), else its id
                    -- (the worker reads the row: handed_to).
                    PERFORM pg_notify(v_w.channel, CASE WHEN octet_length(v_row::text) < 7900
                        THEN v_row::text ELSE jsonb_build_array(v_id)::text END);
                    job_state := 'running';
                END IF;
            ELSE
                IF v_token IS NOT NULL THEN  -- a dedupe hit: the worker stays registered
                    INSERT INTO {schema}.waiting AS w SELECT (v_w).*
                        ON CONFLICT (queue, worker) DO UPDATE SET room = w.room + 1;
                    v_token := NULL;
                END IF;
                job_id := v_hit_id; created := false; job_state := v_hit_state;
            END IF;
            RETURN NEXT;
        END LOOP;
    END IF;
    -- Only queues not yet known are written: an upsert would lock the row and
    -- serialise every enqueue of the queue until the caller's transaction ends.
    IF (v_n = 1 AND v_known IS NOT TRUE)
       OR (v_n > 1 AND EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) e
                              WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues q
                                  WHERE q.name = e.value->>'queue' AND q.known))) THEN
        INSERT INTO {schema}.queues (name, known)
            SELECT DISTINCT value->>'queue', true FROM jsonb_array_elements(p_jobs)
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues q
                              WHERE q.name = value->>'queue' AND q.known)
            ON CONFLICT (name) DO UPDATE SET known = true;
    END IF;
    IF v_token IS NULL THEN  -- a handed job wakes nobody else
        PERFORM pg_notify({channel}, 'jobs');
    END IF;
    PERFORM pg_notify({channel}, 'events');
END
$$;

-- The worker's exchange when it takes handed jobs: `exchange` (0002, unchanged; the
-- wrapper leaves it to its owner) and then the worker's registrations. A claim that got
-- fewer jobs than it asked for (the queues are drained) registers the worker, or renews
-- it, on each of `p_queues` open for a hand-off (no limits row, not paused), for as many
-- jobs as it had room left (`room`), handed to `p_channel` while a session holds
-- `p_alive`; a claim that got all it asked for drops the worker's registrations on
-- `p_queues` (skipping one a producer holds: it is being handed a job). `p_channel` NULL
-- (its listener is down): only the drop. `p_registered`: the worker may be registered
-- (else the drop, a write, is not tried). Returns `exchange`'s JSON and the number of
-- queues it is now registered on.
CREATE OR REPLACE FUNCTION {schema}.exchange_waiting(p_outcomes jsonb, p_queues text[],
    p_limit integer, p_worker text, p_lease_ms bigint, p_now bigint, p_channel text,
    p_alive bigint, p_registered boolean, OUT result text, OUT waiting integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_room integer;
BEGIN
    result := {schema}.exchange(p_outcomes, p_queues, p_limit, p_worker, p_lease_ms, p_now);
    waiting := 0;
    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    v_room := p_limit - jsonb_array_length((result::jsonb)->'jobs');
    IF p_channel IS NOT NULL AND v_room > 0 THEN
        -- A registration of this session is left alone (its room runs down; the producer
        -- that takes the last of it deletes it, and this inserts a new one): a rewrite
        -- would hold its row lock until this COMMIT (a WAL flush when outcomes ride on
        -- it), and a producer meanwhile skips the locked row, so its job would go through
        -- pending instead (W2: every other job when each exchange rewrote it, 1 in 13
        -- when it was rewritten at half its room; measured with bench/pg_pickup.py).
        SELECT count(*) INTO waiting FROM {schema}.waiting x
            WHERE x.worker = p_worker AND x.queue = ANY(p_queues) AND x.alive = p_alive;
        INSERT INTO {schema}.waiting AS w (queue, worker, lease_ms, channel, alive, at_ms, room)
            SELECT q.name, p_worker, p_lease_ms, p_channel, p_alive, {schema}.clock_ms(p_now),
                v_room
            FROM unnest(p_queues) AS q(name)
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.queue_limits l WHERE l.queue = q.name)
              AND NOT EXISTS (SELECT 1 FROM {schema}.queues s WHERE s.name = q.name AND s.paused)
              AND NOT EXISTS (SELECT 1 FROM {schema}.waiting x WHERE x.queue = q.name
                              AND x.worker = p_worker AND x.alive = p_alive)
        ON CONFLICT (queue, worker) DO UPDATE SET lease_ms = excluded.lease_ms,
            channel = excluded.channel, alive = excluded.alive, at_ms = excluded.at_ms,
            room = excluded.room;
        GET DIAGNOSTICS v_room = ROW_COUNT;
        waiting := waiting + v_room;
        IF waiting > 0 THEN  -- reads, once set (see queues.waiting above)
            UPDATE {schema}.queues s SET waiting = true
                WHERE s.name = ANY(p_queues) AND NOT s.waiting AND EXISTS (
                    SELECT 1 FROM {schema}.waiting x WHERE x.queue = s.name
                        AND x.worker = p_worker);
            -- A queue nothing was enqueued to yet has no row (`known` stays false).
            INSERT INTO {schema}.queues (name, waiting)
                SELECT x.queue, true FROM {schema}.waiting x
                WHERE x.worker = p_worker AND x.queue = ANY(p_queues)
                  AND NOT EXISTS (SELECT 1 FROM {schema}.queues s WHERE s.name = x.queue)
                ON CONFLICT (name) DO NOTHING;
        END IF;
    ELSIF p_registered THEN
        DELETE FROM {schema}.waiting w USING (
            SELECT queue, worker FROM {schema}.waiting WHERE worker = p_worker
                AND queue = ANY(p_queues) FOR UPDATE SKIP LOCKED) d
        WHERE w.queue = d.queue AND w.worker = d.worker;
    END IF;
END
$$;
