-- schedule_error: store why the scheduler's leader could not enqueue an occurrence of a
-- schedule, fenced by its leadership lease like schedule_advance: a deposed leader cannot
-- write an error. The next schedule_advance clears it.
--
-- KEYS[1]: the lease string "{p}:lease:<lease name>"
-- KEYS[2]: the schedule hash "{p}:schedule:<name>"
-- ARGV[1]: holder id   ARGV[2]: the error as JSON (message, type, at_ms, occurrence_ms)
-- Returns: 1 if stored; 0 if the lease is not held by ARGV[1] or the schedule is gone.
-- Touches: reads KEYS[1]; writes KEYS[2] (one hash tag).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], 'last_error', ARGV[2])
return 1
