-- Migration 0016: the fair claim (`claim_fair`: queue limits, tenants taking turns) that
-- holds up under churn, as 0013 did for the plain claim. Measured with
-- bench/pg_w1_cost.py --fair (W5: 20,000 jobs over 100 tenants, 2 running jobs per tenant)
-- on a server with autovacuum off (bench/RESULTS.md, section "pgfair"): 523 server buffers
-- and ~450 µs of backend CPU per job, already in the first run. auto_explain of the
-- worker's backends showed why:
-- * the list of tenant buckets with pending jobs had turned its EXISTS into a hash of
--   every pending tenant job of the queue (an index-only scan of `jobs_tenant_claim`, one
--   heap fetch per job: 5,647 buffers for one call), then sorted the tenants;
-- * every turn rewrites its tenant's row, and `tenants_turn` is keyed on the turn, so each
--   turn leaves a dead entry at the head of the queue's range (turns only grow): by the end
--   of a 20,000-job run each claim stepped over 20,000 of them;
-- * the tenant claim of `claim_rows` took its jobs through `jobs_tenant_order` (queue,
--   priority, seq) filtering on the tenant, i.e. it read the pending jobs of every tenant
--   ahead of this one's first. That index is read by no statement of this engine (its twin
--   `jobs_tenant_claim` leads with the tenant), so it goes.
-- `{schema}` / `{channel}` as in 0001. Written to be applied again safely.

DROP INDEX IF EXISTS {schema}.jobs_tenant_order;

-- A lower bound on the turns of a queue's served tenants (turn > 0): every turn below it
-- belongs to a dead row version. Kept by `claim_fair` under its per-queue lock, the only
-- writer of positive turns (enqueue writes 0, a purge deletes rows, turns come from a
-- sequence and only grow), so the bound stays true. The rotation starts its scan of
-- `tenants_turn` there instead of at the head of dead entries every earlier turn left.
-- One row per queue, rewritten in place (no index on `turn`, so HOT).
CREATE TABLE IF NOT EXISTS {schema}.turn_floors (
    queue   text PRIMARY KEY,
    turn    bigint NOT NULL
) WITH (fillfactor = 50);

-- One page of the rotation: up to `p_n` tenant buckets of `p_queue` with turns in
-- [p_from, p_to] that have pending jobs, in turn order, with their running counts. Read
-- from `tenants_turn` in its order, each tenant's pending jobs probed on its own: the
-- probe asks for the tenant's first job in claim order (`enable_sort = off`, set by
-- `claim_fair`), which only `jobs_tenant_claim` gives without a sort, and a LATERAL with
-- a LIMIT is run per tenant row, never turned into a join with every pending job.
CREATE OR REPLACE FUNCTION {schema}.turn_page(p_queue text, p_from bigint, p_to bigint,
    p_n integer)
RETURNS TABLE (turn bigint, tenant text, running integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT t.turn, t.tenant,
        (SELECT count(*) FROM {schema}.jobs r WHERE r.queue = p_queue
            AND r.tenant = t.tenant AND r.state = 'running')::integer
    FROM {schema}.tenants t
    CROSS JOIN LATERAL (
        SELECT 1 FROM {schema}.jobs p WHERE p.queue = p_queue AND p.state = 'pending'
            AND p.tenant IS NOT NULL AND p.tenant = t.tenant
        ORDER BY p.priority DESC, p.seq LIMIT 1) w
    WHERE t.queue = p_queue AND t.turn >= p_from AND t.turn <= p_to AND t.tenant <> ''
    ORDER BY t.turn LIMIT p_n;
END
$$;

-- `claim_fair` (contract as in 0002). Changes from 0002:
-- * the bucket list is two pages of `turn_page`: the tenants never served (turn 0, as
--   enqueue makes them), then the served ones from the floor on;
-- * the bucket of jobs without a tenant is probed in claim order (`jobs_claim`), like
--   the tenants' (another partial index on pending jobs holds every tenant job too);
-- * at the end, the floor moves to the lowest turn still live (one short probe from the
--   old floor: it steps over the dead entries this call and the calls since left);
-- * `enable_sort = off` (see `turn_page`) and `jit = off`: when a plan must sort anyway,
--   the cost that setting adds must not make the server compile the statement (measured:
--   178 ms per call when it did).
-- A tenant with no pending jobs keeps its turn (it is first in line when work comes),
-- so the floor stops at the lowest such tenant; the scan steps over what lies between.
CREATE OR REPLACE FUNCTION {schema}.claim_fair(p_queue text, p_n integer, p_now bigint,
    p_worker text, p_lease_until bigint, OUT got jsonb, OUT hint bigint)
LANGUAGE plpgsql
SET enable_sort = off
SET jit = off
AS $$
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
    v_floor bigint;
    v_lowest bigint;
    b record;
BEGIN
    got := '[]';
    PERFORM pg_advisory_xact_lock(hashtext({channel} || ':claim:' || p_queue));
    SELECT value::integer INTO v_page FROM {schema}.rules WHERE name = 'rotation_page';
    SELECT value::integer INTO v_budget FROM {schema}.rules WHERE name = 'turn_budget';
    SELECT f.turn INTO v_floor FROM {schema}.turn_floors f WHERE f.queue = p_queue;
    v_floor := greatest(coalesce(v_floor, 1), 1);
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
        SELECT coalesce(jsonb_agg(jsonb_build_array(p.turn, p.tenant, p.running)), '[]')
            INTO v_list FROM {schema}.turn_page(p_queue, -9223372036854775808, 0, v_page) p;
        IF jsonb_array_length(v_list) < v_page THEN
            SELECT v_list || coalesce(jsonb_agg(jsonb_build_array(p.turn, p.tenant,
                p.running)), '[]')
            INTO v_list FROM {schema}.turn_page(p_queue, v_floor, 9223372036854775807,
                v_page - jsonb_array_length(v_list)) p;
        END IF;
        -- A plain query, not EXISTS: the planner drops an EXISTS subquery's ORDER BY.
        PERFORM FROM {schema}.jobs p WHERE p.queue = p_queue AND p.state = 'pending'
            AND p.tenant IS NULL ORDER BY p.priority DESC, p.seq LIMIT 1;
        IF FOUND THEN
            v_list := v_list || jsonb_build_array(jsonb_build_array(
                coalesce((SELECT f.turn FROM {schema}.tenants f
                          WHERE f.queue = p_queue AND f.tenant = ''), 0), '', 0));
        END IF;
        -- In turn order, ties by name (as 0002), the no-tenant bucket among the others.
        SELECT coalesce(jsonb_agg(e.value ORDER BY (e.value->>0)::bigint, e.value->>1), '[]')
            INTO v_list FROM jsonb_array_elements(v_list) e;
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
    -- The lowest live turn from the floor on (tenant '' included: a bound for all rows).
    SELECT o.turn INTO v_lowest FROM {schema}.tenants o
        WHERE o.queue = p_queue AND o.turn >= v_floor ORDER BY o.turn LIMIT 1;
    IF v_lowest > v_floor THEN
        INSERT INTO {schema}.turn_floors (queue, turn) VALUES (p_queue, v_lowest)
            ON CONFLICT (queue) DO UPDATE SET turn = excluded.turn;
    END IF;
END
$$;
