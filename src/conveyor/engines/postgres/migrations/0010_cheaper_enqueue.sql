-- Migration 0010: cheaper enqueues and commits. (1) Commit positions are stamped by
-- readers, not drawn by writers; (2) a leaner `enqueue` (at the end of this file).
--
-- 1. Commit positions.
--
-- Since 0005 every transaction that wrote events drew its commit position at COMMIT, in a
-- deferred trigger holding a per-schema advisory lock until the commit was visible: every
-- event-writing commit of the schema (each single enqueue, each exchange) waited for the
-- one before it, one WAL flush at a time, and paid a trigger, a sequence draw and an
-- `event_commits` row whether or not anyone ever read the events.
--
-- Now writers only insert their event rows. A reader, before it reads, stamps every
-- transaction whose events it can see and that has no position yet (`stamp_events`):
-- under the same advisory lock, held to its own COMMIT, it draws the next positions for
-- them. Positions are still handed out one holder at a time, and a holder draws only
-- after the previous holder's stamps are visible, so a position a reader sees is never
-- followed by a lower one: what commits later is stamped later, with a higher position.
-- Timeline of the race this keeps closed:
--     T1 writes events (xid 100) ... T2 writes events (xid 101), commits
--     reader stamps 101 -> pos 7, reads it, holds "7-..."
--     T1 commits; next reader stamps 100 -> pos 8 > 7: read, never skipped.
-- The lock is now taken by readers (a stamp is a short write, done once for all the
-- commits it finds), never by the commit of an enqueue or an exchange. So reading events
-- needs a writable primary, and during a rolling upgrade a reader still on code from
-- before 0010 sees new events only once a reader on this version has stamped them.
--
-- Which transactions to look at, without scanning every event each time: `event_stamp`
-- keeps the snapshot taken before the last stamp. Every transaction visible in it was
-- stamped then; one not visible in it is at or above its xmax or in its list of
-- transactions in progress (`pg_snapshot_xip`), so those are the only xids looked at
-- (two index ranges on `events_xid`). A long transaction elsewhere on the server delays
-- nothing: it stays in that list until it ends, and everything else moves on.
--
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

DROP TRIGGER IF EXISTS event_commit ON {schema}.events;
DROP FUNCTION IF EXISTS {schema}.event_commit();

CREATE TABLE IF NOT EXISTS {schema}.event_stamp (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seen pg_snapshot  -- taken before the last stamp; NULL: look at every event
);
-- (Re)applied: look at every event once (the stamp skips what already has a position).
INSERT INTO {schema}.event_stamp (only_row, seen) VALUES (true, NULL)
    ON CONFLICT (only_row) DO UPDATE SET seen = NULL;

-- Transactions whose events `p_seen` did not show (all, for NULL) and that have no
-- commit position; the caller keeps those its own snapshot shows.
CREATE OR REPLACE FUNCTION {schema}.unstamped_xids(p_seen pg_snapshot)
RETURNS TABLE (xid xid8)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT u.xid FROM (
        SELECT e.xid FROM {schema}.events e
            WHERE p_seen IS NULL OR e.xid >= pg_snapshot_xmax(p_seen)
        UNION ALL
        SELECT e.xid FROM {schema}.events e
            WHERE p_seen IS NOT NULL AND e.xid IN (SELECT pg_snapshot_xip(p_seen))
    ) u
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.event_commits c WHERE c.xid = u.xid)
$$;

-- Stamp every committed, unstamped event transaction this reader can see; returns how
-- many were stamped. Nothing to stamp (the usual poll): no lock, no write.
CREATE OR REPLACE FUNCTION {schema}.stamp_events() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seen pg_snapshot;
    v_now pg_snapshot;
    v_n bigint;
BEGIN
    SELECT s.seen INTO v_seen FROM {schema}.event_stamp s;
    IF NOT EXISTS (SELECT 1 FROM {schema}.unstamped_xids(v_seen)) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext({channel} || ':event-order'));
    -- Each statement below takes a new snapshot (READ COMMITTED), after the lock: it
    -- sees the stamps of whoever held the lock before. `v_now` is taken before the
    -- INSERT's snapshot, so what it shows the INSERT sees too (and stamps).
    SELECT s.seen INTO v_seen FROM {schema}.event_stamp s;
    v_now := pg_current_snapshot();
    INSERT INTO {schema}.event_commits (xid, pos)
        SELECT x.xid, nextval('{schema}.event_pos')
        FROM (SELECT u.xid FROM {schema}.unstamped_xids(v_seen) u ORDER BY u.xid) x
        ON CONFLICT (xid) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    UPDATE {schema}.event_stamp SET seen = v_now;
    RETURN v_n;
END
$$;

-- "Now" as a reader's position: stamp what is visible, then the highest position (a
-- statement of its own, so it sees the stamps just made).
CREATE OR REPLACE FUNCTION {schema}.event_horizon() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.stamp_events();
    RETURN (SELECT coalesce(max(c.pos), 0) FROM {schema}.event_commits c);
END
$$;

-- 2. `enqueue` (contract as in 0001): the function of 0007 with three changes, measured
-- in server CPU per call in bench/RESULTS.md, section "pgenqueue":
--
-- a. A batch of one job (every `app.enqueue`) takes the per-job path directly: one
--    INSERT ... VALUES, where the set-based statement (a materialised CTE feeding three
--    INSERTs) cost about as much again as the rows it wrote. The per-job path now tries
--    the INSERT first and looks for the holder only when it inserted nothing, so a job
--    without a conflict pays no look-up.
-- b. A larger batch whose every job was made answers from what its INSERT returned,
--    without walking the document again.
-- c. The queue is registered only when it is not known yet, checked with a plain
--    SELECT: an INSERT ... ON CONFLICT that inserts nothing cost as much as the job's own
--    INSERT.
--
-- The look-up of a dedupe key's holder keeps 'waiting-children' (see 0007).

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
                INSERT INTO {schema}.jobs AS t (id, queue, task, payload, state, max_attempts,
                    priority, tenant, dedupe_key, timeout_ms, backoff, created_ms,
                    scheduled_ms, seq)
                VALUES (j->>'id', j->>'queue', j->>'task', j->>'payload', v_state,
                    (j->>'max_attempts')::integer, coalesce((j->>'priority')::integer, 0),
                    j->>'tenant', j->>'dedupe_key', (j->>'timeout_ms')::bigint,
                    j->>'backoff', v_now, CASE WHEN v_state = 'scheduled' THEN v_due END,
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
                    VALUES (j->>'queue', 'enqueued', v_id, j->>'task', j->>'tenant', 0,
                            v_now);
                IF j->>'tenant' IS NOT NULL THEN
                    INSERT INTO {schema}.tenants (queue, tenant)
                        VALUES (j->>'queue', j->>'tenant') ON CONFLICT DO NOTHING;
                END IF;
                job_id := v_id; created := true; job_state := v_state;
            ELSE
                job_id := v_hit_id; created := false; job_state := v_hit_state;
            END IF;
            RETURN NEXT;
        END LOOP;
    END IF;
    -- Only queues not yet known are written: an upsert would lock the row and
    -- serialise every enqueue of the queue until the caller's transaction ends.
    IF (v_n = 1 AND NOT EXISTS (SELECT 1 FROM {schema}.queues q
                                 WHERE q.name = p_jobs->0->>'queue' AND q.known))
       OR (v_n > 1 AND EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) e
                              WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues q
                                  WHERE q.name = e.value->>'queue' AND q.known))) THEN
        INSERT INTO {schema}.queues (name, known)
            SELECT DISTINCT value->>'queue', true FROM jsonb_array_elements(p_jobs)
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues q
                              WHERE q.name = value->>'queue' AND q.known)
            ON CONFLICT (name) DO UPDATE SET known = true;
    END IF;
    PERFORM pg_notify({channel}, 'jobs');
    PERFORM pg_notify({channel}, 'events');
END
$$;
