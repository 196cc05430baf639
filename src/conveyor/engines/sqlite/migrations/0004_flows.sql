-- Flows (lifecycle rule 6): a parent waits in 'waiting-children' until its children
-- have finished.
--
-- parent_id / flow_policy: a child's parent and what its failure does to it. The
-- parent's children are found by the partial index jobs_parent (insertion order).
ALTER TABLE jobs ADD COLUMN parent_id TEXT;
ALTER TABLE jobs ADD COLUMN flow_policy TEXT;
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
-- Listings of waiting parents (newest first), all of a queue's or one tenant's.
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (queue, created_ms)
    WHERE state = 'waiting-children';
CREATE INDEX IF NOT EXISTS jobs_tenant_waiting ON jobs (queue, tenant, created_ms)
    WHERE state = 'waiting-children' AND tenant IS NOT NULL;

-- A waiting parent is live: it holds its dedupe key like a scheduled, pending or running
-- job (a retried flow() call finds it).
DROP INDEX IF EXISTS jobs_dedupe;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedupe ON jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL
        AND state IN ('scheduled', 'pending', 'running', 'waiting-children');

-- Jobs of a flow that just finished, for the engine to settle before the same
-- transaction commits (engines/sqlite/flows.py): however a job finishes (an outcome, a
-- lease expiry, an operator cancel), its parent and its children hear of it atomically.
-- The trigger only records; the rule is applied in Python from conveyor.lifecycle.
CREATE TABLE IF NOT EXISTS flow_settle (
    id     INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL
);

CREATE TRIGGER IF NOT EXISTS jobs_flow_settle AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state AND new.state IN ('completed', 'failed', 'cancelled')
        AND (new.parent_id IS NOT NULL OR old.state = 'waiting-children'
             -- a parent that did not complete takes its unfinished children with it,
             -- whatever state it left (an operator may have retried it meanwhile)
             OR (new.state <> 'completed'
                 AND EXISTS (SELECT 1 FROM jobs k WHERE k.parent_id = new.id)))
BEGIN
    INSERT INTO flow_settle (job_id) VALUES (new.id);
END;
