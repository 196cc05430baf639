-- pause: workers stop claiming from the queue; producers keep enqueueing.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- Returns: 1
-- Touches: paused.
redis.call('SET', K_PAUSED, '1')
return 1
