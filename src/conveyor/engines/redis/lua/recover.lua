-- recover: recover running jobs whose lease expired (bounded batch).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: batch size
-- Returns: { recovered, more } (more == 1: expired leases remain, call again).
-- Touches: running, pending (or the job's tenant bucket, tpending, ready), trunning,
--          the tenant state indexes (ts:running|failed:<tenant>),
--          failed, job hashes, dedupe, seq, events; PUBLISH on the wake channel when a
--          bucket was refilled or a slot of a concurrency-limited queue was freed.
local batch = tonumber(ARGV[5])
local examined = redis.call('ZCOUNT', K_RUNNING, '-inf', num(NOW))
local recovered = recover_expired(batch)
wake()
local more = 0
if examined > batch then more = 1 end
return { recovered, more }
