-- retry_job: operator retry of one failed or cancelled job (fresh attempt budget).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- ARGV[4]: job id
-- Returns: { 'ok', HGETALL } | { 'missing' } | { 'invalid', current state }
-- Touches: failed/cancelled, pending or the tenant's bucket (+ tpending, ready), the job
--          hash, dedupe, seq, events; PUBLISH on the wake channel when a bucket was empty.
local id = ARGV[4]
local jk = K_JOB .. id
local state = redis.call('HGET', jk, 'state')
if not state then return { 'missing' } end
if state ~= 'failed' and state ~= 'cancelled' then return { 'invalid', state } end
retry_finished(id, jk, state)
wake()
return job_reply(jk)
