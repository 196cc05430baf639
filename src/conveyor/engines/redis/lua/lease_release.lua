-- lease_release: compare-and-delete, so a successor can take the lease at once (graceful
-- shutdown) without a stale holder ever deleting a lease it no longer holds.
--
-- KEYS[1]: the lease string "{p}:lease:<name>"
-- ARGV[1]: holder id
-- Returns: 1 if ARGV[1] held it (now deleted), 0 otherwise.
-- Touches: KEYS[1] (DEL).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
