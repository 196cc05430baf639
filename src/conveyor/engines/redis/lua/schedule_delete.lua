-- schedule_delete: remove a schedule and its name.
--
-- KEYS[1]: the schedule name set "{p}:schedules"
-- KEYS[2]: the schedule hash "{p}:schedule:<name>"
-- ARGV[1]: name
-- Returns: 1 if it existed, 0 otherwise.
-- Touches: both keys.
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[2])
