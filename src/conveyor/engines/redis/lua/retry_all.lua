-- retry_all: operator retry of up to a batch of failed (or cancelled) jobs, oldest first.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- ARGV[4]: state ('failed' | 'cancelled')   ARGV[5]: batch size
-- Returns: how many were retried (== batch: call again for the rest).
-- Touches: failed/cancelled, pending or the tenant's bucket (+ tpending, ready), job
--          hashes, dedupe, seq, events; PUBLISH on the wake channel when a bucket was empty.
local state = ARGV[4]
if state ~= 'failed' and state ~= 'cancelled' then
  return redis.error_reply('ERR conveyor retry_all: state must be failed or cancelled')
end
local ids = redis.call('ZRANGE', BY_STATE[state], 0, tonumber(ARGV[5]) - 1)
for _, id in ipairs(ids) do
  local jk = K_JOB .. id
  if redis.call('HGET', jk, 'state') == state then
    retry_finished(id, jk, state)
  else
    redis.call('ZREM', BY_STATE[state], id) -- a stale index entry: drop it
  end
end
wake()
return #ids
