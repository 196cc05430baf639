-- Queues with no event log (lifecycle rule 7: `app.limits(queue, events=False)`).
-- The SQL functions write events as they always did; an event row of a queue named in
-- the session's `conveyor.unstreamed` setting (comma-separated; the engine sets it on
-- each pooled session, see connection.py `_tell`, and per statement on a caller's own
-- connection, see queries.sql `enqueue_in`) is dropped before it is
-- written. The WHEN clause is a plain expression, so a streamed queue's event pays no
-- function call, and a session that never set it (another app, a psql shell) writes
-- every event.
CREATE OR REPLACE FUNCTION {schema}.drop_unstreamed_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;  -- BEFORE INSERT: NULL skips the row
END $$;

DROP TRIGGER IF EXISTS unstreamed_events ON {schema}.events;
CREATE TRIGGER unstreamed_events BEFORE INSERT ON {schema}.events FOR EACH ROW
    WHEN (split_part(NEW.queue, '~', 1)  -- a partition (q~3of8) follows its queue
          = ANY (string_to_array(current_setting('conveyor.unstreamed', true), ',')))
    EXECUTE FUNCTION {schema}.drop_unstreamed_event();
