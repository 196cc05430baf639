-- lease_acquire: take a named lease if it is free (or expired), or extend it if ARGV[1]
-- already holds it. Expiry is Redis's own (PX), so the lease follows the Redis clock.
--
-- KEYS[1]: the lease string "{p}:lease:<name>" (value: holder id)
-- ARGV[1]: holder id   ARGV[2]: ttl_ms
-- Returns: 1 if ARGV[1] holds the lease now, 0 if another holder's lease is live.
-- Touches: KEYS[1].
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
