-- promote_job: a scheduled (delayed) job (lifecycle.PROMOTABLE) becomes pending now, at
-- the back of its priority.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: job id
-- Returns: { 'ok', HGETALL } | { 'missing' } | { 'invalid', current state }
-- Touches: scheduled (and the tenant's scheduled index), pending or the tenant's bucket (+ tpending, ready), the job hash,
--          seq, events; PUBLISH on the wake channel when a bucket was empty.
local id = ARGV[5]
local jk = K_JOB .. id
local state = redis.call('HGET', jk, 'state')
if not state then return { 'missing' } end
if not PROMOTABLE[state] then return { 'invalid', state } end
unindex(id, 'scheduled', nil)
push_pending(id, jk, 'back')
emit(id, jk, 'promoted', nil)
wake()
return job_reply(jk)
