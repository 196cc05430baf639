-- heartbeat: extend the leases a worker still holds.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: lease_ms; then pairs: job id, token
-- Returns: the ids whose lease is gone (job missing, not running, or token changed).
-- Touches: running (score = new deadline), reads job hashes.
local deadline = num(NOW + tonumber(ARGV[5]))
local lost = {}
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', K_JOB .. id, 'state', 'token')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('ZADD', K_RUNNING, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
