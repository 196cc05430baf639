-- schedule_pause: pause (ARGV[1] = '1') or resume ('0') a schedule. Resuming a paused
-- schedule moves its baseline to Redis's now, so occurrences that fell while it was
-- paused are never owed.
--
-- KEYS[1]: the schedule hash "{p}:schedule:<name>"
-- ARGV[1]: '1' to pause, '0' to resume
-- ARGV[2]: now in ms from a test clock, or '' (Redis TIME; see _clock.lua)
-- Returns: 1 if the schedule exists, 0 otherwise.
-- Touches: KEYS[1].
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == '0' and redis.call('HGET', KEYS[1], 'paused') == '1' then
  local now = clock_ms(ARGV[2])
  redis.call('HSET', KEYS[1], 'since_ms', string.format('%.0f', now))
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
return 1
