-- schedule_advance: record the latest enqueued occurrence of a schedule, fenced by the
-- scheduler's leadership lease. A scheduler that stalled past its lease (a successor now
-- leads) cannot move last_run_ms, and last_run_ms never moves backwards.
--
-- KEYS[1]: the lease string "{p}:lease:<lease name>"
-- KEYS[2]: the schedule hash "{p}:schedule:<name>"
-- ARGV[1]: holder id   ARGV[2]: occurrence time (epoch ms)
-- Returns: 1 if recorded; 0 if the lease is not held by ARGV[1], the schedule is gone, or
--          ARGV[2] is not later than the stored last run.
-- Touches: reads KEYS[1]; writes KEYS[2] (one hash tag).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
local last = redis.call('HGET', KEYS[2], 'last_run_ms')
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], 'last_run_ms', ARGV[2])
-- A recorded run clears the last error (schedule_error.lua).
redis.call('HDEL', KEYS[2], 'last_error')
return 1
