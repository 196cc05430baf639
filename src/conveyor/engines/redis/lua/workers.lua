-- workers: the workers whose record has not expired, by the Redis clock (read only).
--
-- KEYS[1]: workers zset "{p}:workers"   KEYS[2]: workers info hash "{p}:workers:info"
-- ARGV[1]: now in ms from a test clock, or '' (Redis TIME; see _clock.lua)
-- Returns: flat array, 3 values per live worker: id, expiry ms, "<last seen ms>\n<info>"
-- Touches: reads both worker keys.
local now = clock_ms(ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf',
  'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = live[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or ''
end
return out
