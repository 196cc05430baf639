-- unregister_worker: remove a worker's record (graceful shutdown).
--
-- KEYS[1]: workers zset "{p}:workers"   KEYS[2]: workers info hash "{p}:workers:info"
-- ARGV[1]: worker id
-- Returns: 1
-- Touches: both worker keys.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
