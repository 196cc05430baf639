-- Migration 0010: commit positions are stamped by readers, not drawn by writers.
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
-- commits it finds), never by the commit of an enqueue or an exchange.
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
