-- cancel_job: a live job (lifecycle.CANCELLABLE) -> cancelled; a running job's token is
-- revoked, so its worker's outcome will be reported lost.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: job id
-- Returns: { 'ok', HGETALL } | { 'missing' } | { 'invalid', current state }
-- Touches: scheduled/pending/running (or the job's tenant bucket and tpending), trunning,
--          cancelled, the tenant's state indexes, the job hash, dedupe, events; PUBLISH when a running job of a queue
--          with a concurrency limit freed its slot.
local id = ARGV[5]
local jk = K_JOB .. id
local state = redis.call('HGET', jk, 'state')
if not state then return { 'missing' } end
if not CANCELLABLE[state] then return { 'invalid', state } end
if state == 'pending' then
  remove_pending(id, jk)
else
  unindex(id, state, nil)
end
if state == 'running' then
  left_running(redis.call('HGET', jk, 'tenant'), nil)
end
finish(id, jk, 'cancelled')
emit(id, jk, 'cancelled', nil)
wake()
return job_reply(jk)
