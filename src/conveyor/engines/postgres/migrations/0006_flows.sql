-- Flows (conveyor.lifecycle rule 6): a parent waits in 'waiting-children' until its
-- children have finished.
--
-- parent_id / flow_policy: a child's parent and what its failure does to it.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS parent_id text;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS flow_policy text;
CREATE INDEX IF NOT EXISTS jobs_parent ON {schema}.jobs (parent_id, rid)
    WHERE parent_id IS NOT NULL;

-- Settles a flow job that just finished, inside the statement that finished it (an
-- outcome of `exchange`, a lease expiry in `recover`, an operator cancel), so a child's
-- finish and its parent's release or failure commit together. Updates made here fire
-- this trigger again: a failed parent settles in turn (its other descendants are
-- cancelled, its own parent hears of it). What happens is lifecycle rule 6:
-- `fails_parent(state, policy)` is "did not complete, under fail_parent".
-- Concurrent siblings: the parent row is locked FOR UPDATE, so the second sibling to
-- finish waits for the first one's commit and then sees it (READ COMMITTED: each
-- statement here takes a fresh snapshot).
CREATE OR REPLACE FUNCTION {schema}.flow_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := coalesce(NEW.finished_ms, {schema}.clock_ms());
    p record;
BEGIN
    IF NEW.state <> 'completed' THEN
        WITH c AS (
            UPDATE {schema}.jobs SET state = 'cancelled', finished_ms = v_now, token = NULL,
                lease_until_ms = NULL
            WHERE parent_id = NEW.id
                AND state IN ('scheduled', 'pending', 'running', 'waiting-children')
            RETURNING queue, id, task, tenant, attempt
        )
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        SELECT c.queue, 'cancelled', c.id, c.task, c.tenant, c.attempt, v_now,
            jsonb_build_object('reason', 'flow parent ' || NEW.id || ' ended ' || NEW.state)::text
        FROM c;
    END IF;
    IF NEW.parent_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT id, state, queue, task, tenant INTO p FROM {schema}.jobs
        WHERE id = NEW.parent_id FOR UPDATE;
    IF NOT FOUND OR p.state <> 'waiting-children' THEN
        RETURN NULL;
    END IF;
    IF NEW.state <> 'completed' AND NEW.flow_policy = 'fail_parent' THEN
        UPDATE {schema}.jobs SET state = 'failed', finished_ms = v_now, token = NULL,
            lease_until_ms = NULL,
            errors = {schema}.append_error(errors, jsonb_build_object(
                'attempt', 0, 'type', 'ChildFailed', 'at', v_now / 1000.0,
                'message', 'child ' || NEW.id || ' ended ' || NEW.state
                    || ' under the fail_parent policy: retry the child to re-arm this parent'
            )::text)
        WHERE id = p.id;
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        VALUES (p.queue, 'failed', p.id, p.task, p.tenant, 0, v_now,
            jsonb_build_object('error', 'child ' || NEW.id || ' ended ' || NEW.state)::text);
    ELSIF NOT EXISTS (
        -- Row triggers fire after the whole statement, so a sibling may have failed in
        -- this same statement: a fail_parent failure holds the parent too (its own
        -- trigger fails it).
        SELECT 1 FROM {schema}.jobs WHERE parent_id = p.id
            AND (state IN ('scheduled', 'pending', 'running', 'waiting-children')
                 OR (state IN ('failed', 'cancelled') AND flow_policy = 'fail_parent'))
    ) THEN
        UPDATE {schema}.jobs SET state = 'pending', seq = nextval('{schema}.job_seq')
        WHERE id = p.id;
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms)
        VALUES (p.queue, 'ready', p.id, p.task, p.tenant, 0, v_now);
        PERFORM pg_notify({channel}, 'jobs');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS jobs_flow_settle ON {schema}.jobs;
CREATE TRIGGER jobs_flow_settle AFTER UPDATE OF state ON {schema}.jobs
    FOR EACH ROW
    -- Every failed or cancelled job too (WHEN takes no subquery): a parent that did not
    -- complete takes its unfinished children with it, whatever state it left.
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'failed', 'cancelled')
          AND (NEW.parent_id IS NOT NULL OR OLD.state = 'waiting-children'
               OR NEW.state <> 'completed'))
    EXECUTE FUNCTION {schema}.flow_settle();

-- After an operator retry of `p_id`: its failed parent, and each failed ancestor above
-- it, waits again; the children a parent's failure cancelled come back (pending, or
-- waiting again with theirs when they have children).
CREATE OR REPLACE FUNCTION {schema}.flow_rearm_children(p_parent text, p_now bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT id, queue, task, tenant FROM {schema}.jobs
             WHERE parent_id = p_parent AND state = 'cancelled' ORDER BY rid LOOP
        IF EXISTS (SELECT 1 FROM {schema}.jobs WHERE parent_id = k.id) THEN
            UPDATE {schema}.jobs SET state = 'waiting-children', attempt = 0,
                finished_ms = NULL, result = NULL, token = NULL, lease_until_ms = NULL
            WHERE id = k.id;
            PERFORM {schema}.flow_rearm_children(k.id, p_now);
        ELSE
            UPDATE {schema}.jobs SET state = 'pending', attempt = 0, finished_ms = NULL,
                result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL,
                seq = nextval('{schema}.job_seq')
            WHERE id = k.id;
        END IF;
        INSERT INTO {schema}.events (queue, kind, job_id, task, tenant, attempt, at_ms, data)
        VALUES (k.queue, 'enqueued', k.id, k.task, k.tenant, 0, p_now,
            '{"retried_by": "operator", "flow": "re-armed"}');
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.flow_rearm(p_id text, p_now bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_parent text;
    p record;
BEGIN
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
