-- Flows, re-arming (lifecycle rule 6), as SQLite (engines/sqlite/flows.py) and Redis
-- (_flows.lua) do it; migration 0006's two functions, redefined:
-- * a child comes back with its re-armed parent when its failure cancelled it or when
--   it failed it (failed under fail_parent: lifecycle.comes_back);
-- * a childless one comes back at its own due time: `scheduled` while that is still
--   ahead (a delayed or run_at child keeps it; the cancel left scheduled_ms as it was),
--   `pending` at the back otherwise (0006 sent it straight to pending);
-- * one with children waits again, or is pending at once when none is unfinished;
-- * an operator-retried parent (flow_rearm's p_id itself) waits again for its children
--   the same way (0006 left it pending, to run without them).
CREATE OR REPLACE FUNCTION {schema}.flow_rearm_children(p_parent text, p_now bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT id, queue, task, tenant FROM {schema}.jobs
             WHERE parent_id = p_parent AND (state = 'cancelled'
                 OR (state = 'failed' AND flow_policy = 'fail_parent'))
             ORDER BY rid LOOP
        IF EXISTS (SELECT 1 FROM {schema}.jobs WHERE parent_id = k.id) THEN
            UPDATE {schema}.jobs SET state = 'waiting-children', attempt = 0,
                finished_ms = NULL, result = NULL, token = NULL, lease_until_ms = NULL,
                scheduled_ms = NULL
            WHERE id = k.id;
            PERFORM {schema}.flow_rearm_children(k.id, p_now);
            PERFORM {schema}.flow_release_if_done(k.id);
        ELSE
            UPDATE {schema}.jobs SET
                state = CASE WHEN scheduled_ms > p_now THEN 'scheduled' ELSE 'pending' END,
                scheduled_ms = CASE WHEN scheduled_ms > p_now THEN scheduled_ms END,
                attempt = 0, finished_ms = NULL, result = NULL, token = NULL,
                lease_until_ms = NULL, seq = nextval('{schema}.job_seq')
            WHERE id = k.id;
        END IF;
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        VALUES (k.queue, 'enqueued', k.id, k.task, k.tenant, 0, p_now,
            '{"retried_by": "operator", "flow": "re-armed"}');
    END LOOP;
END
$$;

-- A re-armed parent none of whose children is unfinished has nothing to wait for.
CREATE OR REPLACE FUNCTION {schema}.flow_release_if_done(p_id text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {schema}.jobs SET state = 'pending', seq = nextval('{schema}.job_seq')
    WHERE id = p_id AND state = 'waiting-children' AND NOT EXISTS (
        SELECT 1 FROM {schema}.jobs c WHERE c.parent_id = p_id
            AND c.state IN ('scheduled', 'pending', 'running', 'waiting-children'));
END
$$;

CREATE OR REPLACE FUNCTION {schema}.flow_rearm(p_id text, p_now bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_parent text;
    p record;
BEGIN
    -- p_id was just retried (pending): if it is a parent, it waits for its children again.
    IF EXISTS (SELECT 1 FROM {schema}.jobs WHERE parent_id = p_id) THEN
        UPDATE {schema}.jobs SET state = 'waiting-children', scheduled_ms = NULL
        WHERE id = p_id AND state = 'pending';
        PERFORM {schema}.flow_rearm_children(p_id, p_now);
        PERFORM {schema}.flow_release_if_done(p_id);
    END IF;
    SELECT parent_id INTO v_parent FROM {schema}.jobs WHERE id = p_id;
    WHILE v_parent IS NOT NULL LOOP
        SELECT id, state, queue, task, tenant, parent_id, dedupe_key INTO p FROM {schema}.jobs
            WHERE id = v_parent FOR UPDATE;
        EXIT WHEN NOT FOUND OR p.state <> 'failed';
        -- Its dedupe key is held by another live job now: it stays failed (rule 1).
        EXIT WHEN p.dedupe_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM {schema}.jobs h WHERE h.queue = p.queue
                AND h.dedupe_key = p.dedupe_key AND h.id <> p.id
                AND h.state IN ('scheduled', 'pending', 'running', 'waiting-children'));
        UPDATE {schema}.jobs SET state = 'waiting-children', attempt = 0, finished_ms = NULL,
            result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL
        WHERE id = p.id;
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        VALUES (p.queue, 'enqueued', p.id, p.task, p.tenant, 0, p_now,
            '{"retried_by": "operator", "flow": "re-armed"}');
        PERFORM {schema}.flow_rearm_children(p.id, p_now);
        v_parent := p.parent_id;
    END LOOP;
END
$$;
