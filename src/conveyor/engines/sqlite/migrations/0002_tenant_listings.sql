-- Tenant-filtered listings (issue 12 item 10): one index range per page for a tenant,
-- instead of walking every tenant's jobs in the queue's state index and skipping the
-- other tenants' rows (the time of such a page grew with the other tenants' volume).
-- Partial indexes: jobs without a tenant pay nothing for them.
CREATE INDEX IF NOT EXISTS jobs_tenant_due ON jobs (queue, tenant, scheduled_ms)
    WHERE state = 'scheduled' AND tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_running ON jobs (queue, tenant, created_ms)
    WHERE state = 'running' AND tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_finished ON jobs (queue, tenant, state, finished_ms)
    WHERE finished_ms IS NOT NULL AND tenant IS NOT NULL;
