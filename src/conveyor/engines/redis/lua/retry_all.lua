-- retry_all: operator retry of up to a batch of failed (or cancelled) jobs, the most
-- recently finished first (as on SQLite). A job whose dedupe key is held by another live
-- job is skipped: it stays where it is and is not counted.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: state ('failed' | 'cancelled', checked by the app)   ARGV[6]: batch size
-- ARGV[7]: offset: jobs skipped by the earlier calls of this run (they stay at the head
--          of the walk, so this call starts after them)
-- ARGV[8]: the run's bound: only jobs finished at or before it ('' on the first call:
--          now). Jobs that finish during the run are left out, so the offset holds.
-- Returns: { retried, examined, skipped, bound } (examined == batch: call again for the
--          rest with offset + skipped and the bound).
-- Touches: failed/cancelled, pending or the tenant's bucket (+ tpending, ready), job
--          hashes, dedupe, seq, events; PUBLISH on the wake channel when a bucket was empty.
local state = ARGV[5]
local batch, offset = tonumber(ARGV[6]), tonumber(ARGV[7])
local bound = ARGV[8]
if bound == '' then bound = num(NOW) end
local zkey = BY_STATE[state]
local ids = redis.call('ZREVRANGEBYSCORE', zkey, bound, '-inf', 'LIMIT', offset, batch)
local retried, skipped = 0, 0
for _, id in ipairs(ids) do
  local jk = K_JOB .. id
  if redis.call('HGET', jk, 'state') == state then
    if retry_finished(id, jk, state) then
      skipped = skipped + 1
    else
      retried = retried + 1
    end
  else
    unindex(id, state, nil) -- a stale index entry: drop it
  end
end
wake()
return { retried, #ids, skipped, bound }
