-- resume: undo pause and wake idle workers if there is pending work.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- Returns: 1
-- Touches: paused; PUBLISH on the wake channel when pending is not empty (workers that
--          slept while the queue was paused would not wake otherwise).
redis.call('DEL', K_PAUSED)
wake_needed = true
wake()
return 1
