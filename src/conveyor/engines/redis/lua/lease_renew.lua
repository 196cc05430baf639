-- lease_renew: compare-and-set renewal. Extends the lease only while ARGV[1] holds it, so
-- a holder that stalled past its lease (another took over) learns it lost leadership
-- instead of silently extending someone else's lease.
--
-- KEYS[1]: the lease string "{p}:lease:<name>"
-- ARGV[1]: holder id   ARGV[2]: ttl_ms
-- Returns: 1 if renewed, 0 if the lease is gone or held by another.
-- Touches: KEYS[1] (PEXPIRE).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
