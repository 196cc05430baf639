-- counts: depth per state, paused flag and the age of the oldest pending job (read only).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- Returns: { scheduled, pending, running, completed, failed, cancelled, paused (0/1),
--            created_ms of the oldest pending job or -1,
--            completed in the last 60 s, failed in the last 60 s (finished after now - 60 s,
--            as on SQLite; ZCOUNT: O(log n)), waiting-children }
-- Touches: reads the state zsets (pending: pending + fifo + tpending), paused, job hashes.
--
-- Pending is ordered by priority, so its head is not necessarily the oldest job. Within a
-- priority it is FIFO, so comparing the head of each priority band (at most 201, each an
-- O(log n) lookup) finds the oldest without scanning the set.
-- Jobs with a tenant are indexed in tpending, the others in pending and the fifo (FIFO:
-- its head is its oldest): all are looked at.
local oldest = -1
local head = redis.call('LINDEX', K_FIFO, 1)
if head then
  local id = fifo_id(head)
  local jk = K_JOB .. id
  oldest = tonumber(redis.call('HGET', jk, 'created_ms')) or -1
end
for _, zkey in ipairs({ K_PENDING, K_TPENDING }) do
  local lo = '-inf'
  for _ = 1, 202 do
    local head = redis.call('ZRANGEBYSCORE', zkey, lo, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #head == 0 then break end
    local created = tonumber(redis.call('HGET', K_JOB .. head[1], 'created_ms'))
    if created and (oldest < 0 or created < oldest) then oldest = created end
    lo = num((math.floor(tonumber(head[2]) / PRIORITY_BAND) + 1) * PRIORITY_BAND)
  end
end
return {
  redis.call('ZCARD', K_SCHEDULED),
  bucket_len('') + redis.call('ZCARD', K_TPENDING),
  redis.call('ZCARD', K_RUNNING), redis.call('ZCARD', K_COMPLETED),
  redis.call('ZCARD', K_FAILED), redis.call('ZCARD', K_CANCELLED),
  redis.call('EXISTS', K_PAUSED), oldest,
  redis.call('ZCOUNT', K_COMPLETED, '(' .. num(NOW - 60000), '+inf'),
  redis.call('ZCOUNT', K_FAILED, '(' .. num(NOW - 60000), '+inf'),
  redis.call('ZCARD', K_PARENTS),
}
