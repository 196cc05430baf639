-- exchange: the worker's one round trip per queue: apply outcomes, then claim.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..3]: wake channel, events maxlen, queue
-- ARGV[4]: worker id     ARGV[5]: lease_ms     ARGV[6]: limit (0 = outcomes only)
-- ARGV[7]: n outcomes; then 5 values per outcome:
--          job id, token, kind (complete|retry|fail|release), body, delay_ms
--          (body: result json for complete, error json for retry/fail, '' for release)
-- Returns: { lost ids, ms until the next scheduled job is due (-1: none),
--            claimed jobs (each a flat HGETALL array), expired leases recovered }
-- Touches: job hashes, every state zset, dedupe, seq, front, events; PUBLISH on the
--          wake channel when pending was empty and is not after the claim.
--
-- Order: outcomes first (a released job may be claimed again at once), then, when
-- limit > 0: promote due scheduled jobs and recover expired leases (bounded batches),
-- then claim in pending order unless the queue is paused.
local BATCH = 1000
local worker, lease_ms, limit = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local kind = ARGV[8 + i * 5 + 2]
  if kind ~= 'complete' and kind ~= 'retry' and kind ~= 'fail' and kind ~= 'release' then
    return redis.error_reply('ERR conveyor exchange: unknown outcome kind ' .. tostring(kind))
  end
end

local lost = {}
for i = 0, n - 1 do
  local b = 8 + i * 5
  local id, token, kind, body = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local jk = K_JOB .. id
  local f = redis.call('HMGET', jk, 'state', 'token')
  -- The token fences a worker that lost its lease: it may not touch the job any more.
  if f[1] ~= 'running' or f[2] ~= token then
    lost[#lost + 1] = id
  else
    redis.call('ZREM', K_RUNNING, id)
    if kind == 'complete' then
      if body ~= '' then redis.call('HSET', jk, 'result', body) end
      finish(id, jk, 'completed')
      emit(id, jk, 'completed', nil)
    elseif kind == 'fail' then
      add_error(jk, body)
      finish(id, jk, 'failed')
      emit(id, jk, 'failed', cjson.encode({ error = error_message(body) }))
    elseif kind == 'retry' then
      local delay = tonumber(ARGV[b + 4]) or 0
      add_error(jk, body)
      redis.call('HDEL', jk, 'token')
      if delay > 0 then
        schedule(id, jk, NOW + delay)
      else
        push_pending(id, jk, false, nil)
      end
      emit(id, jk, 'retried', cjson.encode({ error = error_message(body), delay_ms = delay }))
    else -- release: handed back on shutdown, the attempt does not count
      if redis.call('HINCRBY', jk, 'attempt', -1) < 0 then
        redis.call('HSET', jk, 'attempt', 0)
      end
      redis.call('HDEL', jk, 'token', 'started_ms')
      push_pending(id, jk, true, nil)
      emit(id, jk, 'released', nil)
    end
  end
end

local claimed = {}
local recovered = 0
if limit > 0 then
  promote_due(BATCH)
  recovered = recover_expired(BATCH)
  if redis.call('EXISTS', K_PAUSED) == 0 then
    local popped = redis.call('ZPOPMIN', K_PENDING, limit)
    local count = #popped / 2
    if count > 0 then
      -- One INCRBY for all tokens of this claim: unique per queue, never reused.
      local last = redis.call('INCRBY', K_SEQ, count)
      local deadline = num(NOW + lease_ms)
      local started = num(NOW)
      for j = 1, count do
        local id = popped[j * 2 - 1]
        local jk = K_JOB .. id
        if redis.call('HGET', jk, 'state') == 'pending' then
          local token = num(last - count + j) .. '-' .. started
          redis.call('HINCRBY', jk, 'attempt', 1)
          redis.call('HSET', jk, 'state', 'running', 'token', token, 'started_ms', started,
            'worker', worker)
          redis.call('ZADD', K_RUNNING, deadline, id)
          emit(id, jk, 'started', nil)
          claimed[#claimed + 1] = redis.call('HGETALL', jk)
        end
      end
    end
  end
end

local next_due = -1
local first = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - NOW)
end
wake()
return { lost, next_due, claimed, recovered }
