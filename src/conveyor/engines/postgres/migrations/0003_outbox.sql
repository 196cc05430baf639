-- Migration 0003: the outbox, for jobs that live in another engine (Redis).
--
-- `app.outbox(conn).add(...)` inserts a row in the caller's transaction; `conveyor
-- relay` takes committed rows in batches (FOR UPDATE SKIP LOCKED, so several relays
-- never take the same row), enqueues them into the target engine with an id and a
-- dedupe key derived from the row id (a relay that dies between the enqueue and the
-- DELETE re-sends the same job, which the target answers with the existing one), and
-- deletes them in the same transaction.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text NOT NULL,              -- the built job, as enqueue() takes it
    created_ms  bigint NOT NULL DEFAULT {schema}.clock_ms()
) WITH (autovacuum_vacuum_scale_factor = 0.02);

-- Relays wake on COMMIT of any transaction that added rows.
CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, 'outbox');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_notify ON {schema}.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify();
