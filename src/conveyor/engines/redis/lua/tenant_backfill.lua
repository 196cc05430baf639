-- tenant_backfill: index one batch of a state's tenant jobs in their tenants' indexes
-- (ts:<state>:<tenant>), for jobs stored before those indexes existed. Idempotent (ZADD
-- of the same score); each batch is atomic, so a job moving meanwhile is indexed either
-- by this batch or by the script that moves it, never left half-way.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: state (not pending: the buckets always existed)
-- ARGV[6]: lowest score to read (inclusive; '-inf' first)
-- ARGV[7]: entries at exactly that score already read (skipped)
-- ARGV[8]: batch size
-- Returns: { entries read, score of the last one read (or ''), entries read at that
--            score in this batch }. Walking by score, not offset: entries that leave
--            the zset between batches do not make the walk skip others.
-- Touches: reads the state's zset and job hashes; writes tenant state indexes.
local state = ARGV[5]
local zkey = BY_STATE[state]
local rows = redis.call('ZRANGEBYSCORE', zkey, ARGV[6], '+inf', 'WITHSCORES', 'LIMIT',
  tonumber(ARGV[7]), tonumber(ARGV[8]))
local last, at_last = '', 0
for i = 1, #rows, 2 do
  local id, score = rows[i], rows[i + 1]
  local f = redis.call('HMGET', K_JOB .. id, 'tenant', 'started_ms')
  if f[1] and f[1] ~= '' then
    local tkey = tstate_key(state, f[1])
    -- Running jobs are indexed by claim time (see exchange.lua), the others as in zkey.
    if state == 'running' then score = f[2] or score end
    redis.call('ZADD', tkey, score, id)
  end
  if rows[i + 1] == last then at_last = at_last + 1 else last, at_last = rows[i + 1], 1 end
end
return { #rows / 2, last, at_last }
