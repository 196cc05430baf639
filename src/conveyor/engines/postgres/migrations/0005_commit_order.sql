-- Migration 0005: events in commit order, and a set-based enqueue.
--
-- 1. Event visibility. Until now a reader only read events of transactions older than
--    the oldest transaction running anywhere on the server (`pg_snapshot_xmin`), so one
--    long transaction in any database of the cluster held back every event. Now each
--    transaction that writes events gets a row in `event_commits` while it commits: a
--    deferred trigger takes an advisory lock of this schema, draws the next `pos` and
--    keeps the lock until the transaction has committed (Postgres releases locks after
--    a commit becomes visible). The next writer draws its position only after that, so
--    positions are handed out in commit order, and once a reader sees position p every
--    position below p is visible or will never exist (a rolled-back writer). A reader
--    reads events by (commit position, id) and its position is "pos-id"; nothing can
--    appear behind it, and an open transaction that wrote no events delays nobody. The
--    lock is held only from the deferred trigger to the end of COMMIT, so writers of
--    events are serialised for their commit's WAL flush and nothing else. (A caller's
--    transaction that runs `SET CONSTRAINTS ALL IMMEDIATE` after enqueueing takes the
--    lock at that statement instead, and holds it to its COMMIT: still correct, slower.)
-- 2. `enqueue` inserts the whole batch with one INSERT ... SELECT (and one INSERT of its
--    events) instead of a row-by-row loop; only jobs that hit a conflict (their id, or a
--    dedupe key a live job holds) take the per-job path that names the holder.
--
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely (the upgrade
-- test deletes version rows and re-runs later migrations).

CREATE TABLE IF NOT EXISTS {schema}.event_commits (
    xid xid8 PRIMARY KEY,   -- the transaction that wrote the events (events.xid)
    pos bigint NOT NULL     -- its commit position
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE UNIQUE INDEX IF NOT EXISTS event_commits_pos ON {schema}.event_commits (pos);
CREATE SEQUENCE IF NOT EXISTS {schema}.event_pos;

-- Events written before this migration keep the positions readers already hold: their
-- id was "xid-id", and their xid becomes their commit position. New positions start
-- above every transaction id so far, so they sort after every old position.
INSERT INTO {schema}.event_commits (xid, pos)
    SELECT DISTINCT e.xid, e.xid::text::bigint FROM {schema}.events e
    ON CONFLICT (xid) DO NOTHING;
SELECT setval('{schema}.event_pos', greatest(
    pg_current_xact_id()::text::bigint,
    (SELECT coalesce(max(pos), 0) FROM {schema}.event_commits),
    (SELECT last_value FROM {schema}.event_pos)));

-- At COMMIT (deferred): the transaction's position, drawn under the schema's lock for
-- commit order (held until the commit is visible, see above).
CREATE OR REPLACE FUNCTION {schema}.event_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext({channel} || ':event-order'));
    INSERT INTO {schema}.event_commits (xid, pos)
        VALUES (NEW.xid, nextval('{schema}.event_pos'))
        ON CONFLICT (xid) DO NOTHING;
    RETURN NULL;
END
$$;
-- Queued once per transaction: the WHEN (evaluated as each event row is inserted, from
-- built-ins only, so it costs no function call) is true for the first event row of the
-- transaction and notes the transaction in a transaction-local setting. A savepoint
-- rolled back undoes both the note and the queued trigger, so the next row queues it
-- again; another schema's events in the same transaction overwrite the note, which only
-- queues a second trigger that finds its row there.
DROP TRIGGER IF EXISTS event_commit ON {schema}.events;
CREATE CONSTRAINT TRIGGER event_commit AFTER INSERT ON {schema}.events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (CASE WHEN current_setting('conveyor.event_tx', true)
                    = {channel} || ':' || pg_current_xact_id()::text THEN false
               ELSE set_config('conveyor.event_tx',
                               {channel} || ':' || pg_current_xact_id()::text, true)
                    IS NOT NULL END)
    EXECUTE FUNCTION {schema}.event_commit();

-- Readers now find a commit's events by its xid (then keep their queue's): an index on
-- xid alone replaces (queue, xid, id), which every event insert paid for with a text key.
-- It also gives the oldest event's xid, below which commit positions are trimmed.
CREATE INDEX IF NOT EXISTS events_xid ON {schema}.events (xid);
DROP INDEX IF EXISTS {schema}.events_read;

-- Enqueue (contract as in 0001): one INSERT for the batch, then the per-job path only
-- for jobs that conflicted.
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
                    AND h.state IN ('scheduled', 'pending', 'running');
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

-- apply_outcomes (contract as in 0002) in PL/pgSQL: a LANGUAGE sql function whose body
-- writes is never inlined, so it was planned again on every call, twice per exchange
-- (outcomes, then lease recovery, usually with nothing to recover); PL/pgSQL keeps the
-- plan per connection, and an empty batch now returns before any statement.
CREATE OR REPLACE FUNCTION {schema}.apply_outcomes(p_outcomes jsonb, p_now bigint)
RETURNS TABLE (job_id text, job_queue text, target text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF p_outcomes IS NULL OR jsonb_array_length(p_outcomes) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH x AS (
        SELECT o.id, o.token, o.result, o.err, o.data, t.event, t.append_error,
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
        WHERE j.id = x.id AND j.token = x.token AND j.state = 'running'
        RETURNING j.id, j.queue, j.task, j.tenant, j.attempt, x.event, x.data, x.target
    ), ev AS (
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        SELECT u.queue, u.event, u.id, u.task, u.tenant, u.attempt, p_now, u.data FROM u
    )
    SELECT u.id, u.queue, u.target FROM u;
END
$$;
