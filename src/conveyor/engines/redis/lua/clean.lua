-- clean: delete finished jobs of one state that finished before a cutoff (bounded).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- ARGV[4]: state ('completed' | 'failed' | 'cancelled')   ARGV[5]: older_than_ms
-- ARGV[6]: limit
-- Returns: how many jobs were deleted.
-- Touches: the state's zset, job hashes (DEL).
local state = ARGV[4]
if state ~= 'completed' and state ~= 'failed' and state ~= 'cancelled' then
  return redis.error_reply('ERR conveyor clean: only finished states can be cleaned')
end
local zkey = BY_STATE[state]
local cutoff = num(NOW - tonumber(ARGV[5]))
local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  redis.call('DEL', K_JOB .. id)
  redis.call('ZREM', zkey, id)
end
return #ids
