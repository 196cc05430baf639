-- register_worker: record that a worker is alive until now + ttl; prune expired records.
--
-- KEYS[1]: workers zset "{p}:workers" (id -> expiry ms)
-- KEYS[2]: workers info hash "{p}:workers:info" (id -> "<last seen ms>\n<info json>")
-- ARGV[1]: worker id   ARGV[2]: info json   ARGV[3]: ttl_ms
-- ARGV[4]: now in ms from a test clock, or '' (Redis TIME; see _clock.lua)
-- Returns: 1
-- Touches: both worker keys (one hash tag, so one slot).
local now = clock_ms(ARGV[4])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now),
  'LIMIT', 0, 100)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], string.format('%.0f', now) .. '\n' .. ARGV[2])
return 1
