-- Flows: a childless job its parent's failure cancelled comes back (a re-armed parent,
-- lifecycle rule 6) at its own due time: `scheduled` while that is still ahead (a
-- delayed or run_at child keeps it; the cancel left scheduled_ms as it was), `pending`
-- at the back otherwise. Migration 0006's flow_rearm_children sent it straight to
-- pending; this is that function with the due time kept, otherwise unchanged.
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
