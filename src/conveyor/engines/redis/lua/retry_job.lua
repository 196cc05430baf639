-- retry_job: operator retry of one failed or cancelled job (lifecycle.RETRYABLE), with a
-- fresh attempt budget; refused while its dedupe key is held by another live job.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: job id
-- Returns: { 'ok', HGETALL } | { 'missing' } | { 'invalid', current state }
--          | { 'held', dedupe key, holder id } (nothing changed)
-- Touches: failed/cancelled (+ ts:<state>:<tenant>), pending or the tenant's bucket
--          (+ tpending, ready), the job
--          hash, dedupe, seq, events; PUBLISH on the wake channel when a bucket was empty.
local id = ARGV[5]
local jk = K_JOB .. id
local state = redis.call('HGET', jk, 'state')
if not state then return { 'missing' } end
if not RETRYABLE[state] then return { 'invalid', state } end
local holder, key = retry_finished(id, jk, state)
if holder then return { 'held', key, holder } end
wake()
return job_reply(jk)
