-- promote_job: a scheduled (delayed) job becomes pending now.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- ARGV[4]: job id
-- Returns: { 'ok', HGETALL } | { 'missing' } | { 'invalid', current state }
-- Touches: scheduled, pending or the tenant's bucket (+ tpending, ready), the job hash,
--          seq, events; PUBLISH on the wake channel when a bucket was empty.
local id = ARGV[4]
local jk = K_JOB .. id
local state = redis.call('HGET', jk, 'state')
if not state then return { 'missing' } end
if state ~= 'scheduled' then return { 'invalid', state } end
redis.call('ZREM', K_SCHEDULED, id)
push_pending(id, jk, false, nil, nil)
emit(id, jk, 'promoted', nil)
wake()
return job_reply(jk)
