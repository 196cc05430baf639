-- schedule_put: create or update a schedule's definition. A new schedule starts unpaused
-- with its baseline (since_ms) at Redis's now; an update keeps paused, since_ms and
-- last_run_ms.
--
-- KEYS[1]: the schedule name set "{p}:schedules"
-- KEYS[2]: the schedule hash "{p}:schedule:<name>"
-- ARGV[1]: name   ARGV[2]: spec json   ARGV[3]: source ('code' | 'runtime')
-- ARGV[4]: now in ms from a test clock, or '' (Redis TIME; see _clock.lua)
-- Returns: 1 if created, 0 if updated.
-- Touches: both keys (one hash tag).
local created = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = clock_ms(ARGV[4])
  redis.call('HSET', KEYS[2], 'paused', '0', 'since_ms', string.format('%.0f', now))
  created = 1
end
redis.call('HSET', KEYS[2], 'name', ARGV[1], 'spec', ARGV[2], 'source', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return created
