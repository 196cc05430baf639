-- clean: delete jobs of one finished state that finished at or before a cutoff, oldest
-- first (bounded). The app refuses live states (lifecycle.check_clean).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: state ('completed' | 'failed' | 'cancelled')   ARGV[6]: older_than_ms
-- ARGV[7]: limit
-- Returns: how many jobs were deleted.
-- Touches: the state's zset and its tenant indexes, job hashes (DEL).
local state = ARGV[5]
local zkey = BY_STATE[state]
local cutoff = num(NOW - tonumber(ARGV[6]))
local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[7]))
for _, id in ipairs(ids) do
  unindex(id, state, nil)
  redis.call('DEL', K_JOB .. id)
end
return #ids
