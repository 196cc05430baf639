-- Migration 0002: the worker's one round trip, as SQL functions.
--
-- `exchange` (outcomes, promotion, lease recovery, claims) and its parts. The rules
-- they apply are rows of `transitions` and `rules`, written by the engine at connect
-- from `conveyor.lifecycle` (rules.py). `{schema}` / `{channel}` as in 0001.

-- --- the rules, as data ------------------------------------------------------------------
-- `conveyor.lifecycle` decides every rule; the engine writes them here at connect
-- (`rules.py`, from `lifecycle.TRANSITIONS` and its constants), and the functions
-- below read them, so no rule is written in SQL.
CREATE TABLE IF NOT EXISTS {schema}.transitions (
    kind                text PRIMARY KEY,   -- an outcome, or expire / expire_last
    state               text NOT NULL,
    later_state         text,               -- the state when the outcome has a delay
    finishes            boolean NOT NULL,   -- `state` is a finished state
    later_finishes      boolean NOT NULL,
    append_error        boolean NOT NULL,
    give_back_attempt   boolean NOT NULL,
    clear_started       boolean NOT NULL,
    place               text,               -- front | back | keep (back to pending)
    event               text NOT NULL,
    store_result        boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.rules (
    name    text PRIMARY KEY,               -- promote_batch, recover_batch, rotation_page,
    value   text NOT NULL                   -- turn_budget, lease_expired_{type,message,event}
);

-- Applies outcomes, fenced by token, as `transitions` says; inserts their events.
-- p_outcomes: [{id, token, kind, result, err, delay_ms, data}] (data: the event's).
CREATE OR REPLACE FUNCTION {schema}.apply_outcomes(p_outcomes jsonb, p_now bigint)
RETURNS TABLE (job_id text, job_queue text, target text)
LANGUAGE sql AS $$
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
    SELECT u.id, u.queue, u.target FROM u
$$;

-- Claims up to p_n pending jobs of one bucket (p_tenant NULL: the jobs without a
-- tenant) in priority/FIFO order, with FOR UPDATE SKIP LOCKED, and records their
-- `started` events. Returns the job rows (JOB_COLUMNS order) as a JSON array.
CREATE OR REPLACE FUNCTION {schema}.claim_rows(p_queue text, p_tenant text, p_n integer,
    p_now bigint, p_worker text, p_lease_until bigint)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_rows jsonb;
    v_ids text[];
BEGIN
    IF p_n <= 0 THEN
        RETURN '[]';
    END IF;
    -- Two statements, one per claim index (a partial index needs its literal terms).
    IF p_tenant IS NULL THEN
        SELECT array_agg(s.id) INTO v_ids FROM (
            SELECT id FROM {schema}.jobs WHERE queue = p_queue AND state = 'pending'
                AND tenant IS NULL
            ORDER BY priority DESC, seq LIMIT p_n FOR UPDATE SKIP LOCKED) s;
    ELSE
        SELECT array_agg(s.id) INTO v_ids FROM (
            SELECT id FROM {schema}.jobs WHERE queue = p_queue AND state = 'pending'
                AND tenant IS NOT NULL AND tenant = p_tenant
            ORDER BY priority DESC, seq LIMIT p_n FOR UPDATE SKIP LOCKED) s;
    END IF;
    IF v_ids IS NULL THEN
        RETURN '[]';
    END IF;
    WITH c AS (
        UPDATE {schema}.jobs SET state = 'running', attempt = attempt + 1,
            token = replace(gen_random_uuid()::text, '-', ''), started_ms = p_now,
            worker = p_worker, lease_until_ms = p_lease_until
        WHERE id = ANY(v_ids)
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

-- Starts inside a rate window (after dropping older ones) and the oldest of them.
CREATE OR REPLACE FUNCTION {schema}.rate_window(p_queue text, p_scope text, p_now bigint,
    p_window_ms integer, OUT started integer, OUT oldest bigint)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.rate_log
        WHERE queue = p_queue AND scope = p_scope AND at_ms <= p_now - p_window_ms;
    SELECT count(*), min(at_ms) INTO started, oldest FROM {schema}.rate_log
        WHERE queue = p_queue AND scope = p_scope;
END
$$;

-- Recovers expired leases of one queue: `expire` while attempts are left (back to
-- pending at the place it held), `expire_last` otherwise (failed, with the
-- lease-expired AttemptError built from the rules).
CREATE OR REPLACE FUNCTION {schema}.recover(p_queue text, p_now bigint,
    OUT stalled integer, OUT failed integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_outcomes jsonb;
BEGIN
    WITH r AS (SELECT
            max(value) FILTER (WHERE name = 'lease_expired_type') AS type,
            max(value) FILTER (WHERE name = 'lease_expired_message') AS message,
            max(value) FILTER (WHERE name = 'lease_expired_event') AS event,
            max(value) FILTER (WHERE name = 'recover_batch')::integer AS batch
        FROM {schema}.rules)
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', e.id, 'token', e.token,
        'kind', t.kind, 'delay_ms', 0,
        'err', CASE WHEN t.append_error THEN jsonb_build_object('attempt', e.attempt,
            'type', r.type, 'message', replace(r.message, '{attempt}', e.attempt::text),
            'at', p_now / 1000.0)::text END,
        'data', CASE WHEN t.append_error THEN r.event END)), '[]')
    INTO v_outcomes
    FROM r, LATERAL (
        SELECT id, token, attempt,
            CASE WHEN attempt < max_attempts THEN 'expire' ELSE 'expire_last' END AS kind
        FROM {schema}.jobs WHERE queue = p_queue AND state = 'running'
            AND lease_until_ms <= p_now
        LIMIT r.batch FOR UPDATE SKIP LOCKED) e
    JOIN {schema}.transitions t ON t.kind = e.kind;
    SELECT count(*) FILTER (WHERE a.target = 'pending'),
           count(*) FILTER (WHERE a.target <> 'pending')
    INTO stalled, failed FROM {schema}.apply_outcomes(v_outcomes, p_now) a;
END
$$;

-- Claims up to p_n jobs of one queue under its limits, tenants taking turns (the
-- least recently served bucket with pending jobs first, one job per turn; a bucket
-- moves to the back whether it took a job or passed at its limit). Runs under an
-- advisory lock per queue held to COMMIT, so the running counts, the rate log and the
-- turns are read and spent by one claimer of the fleet at a time.
-- Returns the rows claimed (bucket order) and the ms until a rate window reopens
-- when a rate held jobs back.
CREATE OR REPLACE FUNCTION {schema}.claim_fair(p_queue text, p_n integer, p_now bigint,
    p_worker text, p_lease_until bigint, OUT got jsonb, OUT hint bigint)
LANGUAGE plpgsql AS $$
DECLARE
    lim record;
    v_room integer := p_n;
    v_budget integer;
    v_page integer;
    v_started integer;
    v_oldest bigint;
    v_list jsonb;
    v_buckets integer;
    v_served boolean;
    v_allowed integer;
    v_rows jsonb;
    v_n integer;
    b record;
BEGIN
    got := '[]';
    PERFORM pg_advisory_xact_lock(hashtext({channel} || ':claim:' || p_queue));
    SELECT value::integer INTO v_page FROM {schema}.rules WHERE name = 'rotation_page';
    SELECT value::integer INTO v_budget FROM {schema}.rules WHERE name = 'turn_budget';
    SELECT * INTO lim FROM {schema}.queue_limits WHERE queue = p_queue;
    IF lim.concurrency IS NOT NULL THEN
        v_room := least(v_room, lim.concurrency - (SELECT count(*) FROM {schema}.jobs
            WHERE queue = p_queue AND state = 'running')::integer);
    END IF;
    IF lim.rate IS NOT NULL THEN
        SELECT w.started, w.oldest INTO v_started, v_oldest
            FROM {schema}.rate_window(p_queue, '', p_now, lim.rate_window_ms) w;
        IF v_started >= lim.rate THEN
            hint := least(hint, coalesce(v_oldest, p_now) + lim.rate_window_ms - p_now);
        END IF;
        v_room := least(v_room, lim.rate - v_started);
    END IF;
    v_budget := greatest(v_room, 0) + v_budget;
    WHILE v_room > 0 AND v_budget > 0 LOOP
        SELECT coalesce(jsonb_agg(jsonb_build_array(s.turn, s.tenant, s.running)
            ORDER BY s.turn, s.tenant), '[]')
        INTO v_list FROM (
            (SELECT t.turn, t.tenant,
                (SELECT count(*) FROM {schema}.jobs r WHERE r.queue = t.queue
                    AND r.tenant = t.tenant AND r.state = 'running')::integer AS running
            FROM {schema}.tenants t
            WHERE t.queue = p_queue AND t.tenant <> '' AND EXISTS (
                SELECT 1 FROM {schema}.jobs p WHERE p.queue = t.queue
                    AND p.tenant IS NOT NULL AND p.tenant = t.tenant AND p.state = 'pending')
            ORDER BY t.turn LIMIT v_page)
            UNION ALL
            SELECT coalesce((SELECT f.turn FROM {schema}.tenants f
                             WHERE f.queue = p_queue AND f.tenant = ''), 0), '', 0
            WHERE EXISTS (SELECT 1 FROM {schema}.jobs p WHERE p.queue = p_queue
                          AND p.state = 'pending' AND p.tenant IS NULL)) s;
        v_buckets := jsonb_array_length(v_list);
        EXIT WHEN v_buckets = 0;
        v_served := false;
        FOR b IN SELECT e.value->>1 AS tenant, (e.value->>2)::integer AS running
                 FROM jsonb_array_elements(v_list) WITH ORDINALITY e ORDER BY e.ordinality LOOP
            EXIT WHEN v_room <= 0 OR v_budget <= 0;
            v_budget := v_budget - 1;
            v_allowed := CASE WHEN v_buckets = 1 THEN v_room ELSE 1 END;
            IF b.tenant <> '' THEN  -- jobs without a tenant are not subject to tenant limits
                IF lim.tenant_concurrency IS NOT NULL THEN
                    v_allowed := least(v_allowed, lim.tenant_concurrency - b.running);
                END IF;
                IF lim.tenant_rate IS NOT NULL THEN
                    SELECT w.started, w.oldest INTO v_started, v_oldest
                        FROM {schema}.rate_window(p_queue, b.tenant, p_now,
                                                  lim.tenant_rate_window_ms) w;
                    IF v_started >= lim.tenant_rate THEN
                        hint := least(hint,
                            coalesce(v_oldest, p_now) + lim.tenant_rate_window_ms - p_now);
                    END IF;
                    v_allowed := least(v_allowed, lim.tenant_rate - v_started);
                END IF;
            END IF;
            -- Served or passed: to the back of the line.
            INSERT INTO {schema}.tenants (queue, tenant, turn)
                VALUES (p_queue, b.tenant, nextval('{schema}.turn_seq'))
                ON CONFLICT (queue, tenant) DO UPDATE SET turn = excluded.turn;
            CONTINUE WHEN v_allowed <= 0;
            v_rows := {schema}.claim_rows(p_queue, nullif(b.tenant, ''), v_allowed, p_now,
                                          p_worker, p_lease_until);
            v_n := jsonb_array_length(v_rows);
            CONTINUE WHEN v_n = 0;
            v_served := true;
            v_room := v_room - v_n;
            got := got || v_rows;
            IF lim.rate IS NOT NULL THEN
                INSERT INTO {schema}.rate_log (queue, scope, at_ms)
                    SELECT p_queue, '', p_now FROM generate_series(1, v_n);
            END IF;
            IF b.tenant <> '' AND lim.tenant_rate IS NOT NULL THEN
                INSERT INTO {schema}.rate_log (queue, scope, at_ms)
                    SELECT p_queue, b.tenant, p_now FROM generate_series(1, v_n);
            END IF;
        END LOOP;
        EXIT WHEN NOT v_served;
    END LOOP;
END
$$;

-- The worker's one round trip: apply `p_outcomes` (fenced), then, when p_limit > 0, for
-- each queue promote due jobs, recover expired leases and claim (skipping paused
-- queues): plainly with SKIP LOCKED when the queue has no limits and no tenant jobs
-- pending, else through claim_fair. NOTIFYs the wake-ups it causes (at COMMIT).
-- Returns JSON: {jobs: [[JOB_COLUMNS]...], done: [ids whose outcome applied],
-- next_due: ms or null, recovered, woke, events}.
CREATE OR REPLACE FUNCTION {schema}.exchange(p_outcomes jsonb, p_queues text[],
    p_limit integer, p_worker text, p_lease_ms bigint, p_now bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
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
            -- Due jobs join the back of the line oldest due first, and jobs due in the
            -- same millisecond in enqueue order: positions are drawn over the ordered
            -- rows, not in whatever order the UPDATE meets them.
            UPDATE {schema}.jobs j SET state = 'pending', scheduled_ms = NULL, seq = d.pos
            FROM (SELECT o.id, nextval('{schema}.job_seq') AS pos FROM (
                    SELECT id FROM {schema}.jobs WHERE queue = q AND state = 'scheduled'
                        AND scheduled_ms <= v_now ORDER BY scheduled_ms, seq
                        LIMIT v_promote FOR UPDATE SKIP LOCKED) o) d
            WHERE j.id = d.id;
            SELECT r.stalled, r.failed INTO v_stalled, v_failed
                FROM {schema}.recover(q, v_now) r;
            v_recovered := v_recovered + v_stalled + v_failed;
            v_events := v_events + v_stalled + v_failed;
            v_woke := v_woke OR v_stalled > 0 OR (v_failed > 0 AND q = ANY(v_slotted));
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
