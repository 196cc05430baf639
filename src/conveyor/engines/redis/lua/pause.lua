-- pause: workers stop claiming from the queue; producers keep enqueueing.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- Returns: 1
-- Touches: paused.
redis.call('SET', K_PAUSED, '1')
return 1
