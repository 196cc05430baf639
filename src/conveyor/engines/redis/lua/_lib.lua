-- _lib.lua: helpers prepended to every per-queue script (not an operation itself).
--
-- Every per-queue script receives the same KEYS, all carrying the queue's hash tag
-- (built by keys.py QueueKeys.all(); nothing here invents a key name):
--   KEYS[1]  job prefix "{p:q}:job:"  (a job's hash is KEYS[1] .. job id: the only key
--            derived in Lua, because ids popped from a zset cannot be declared up front;
--            it carries the same hash tag, so it lives in the same slot)
--   KEYS[2]  pending zset      KEYS[3]  scheduled zset    KEYS[4]  running zset
--   KEYS[5]  completed zset    KEYS[6]  failed zset       KEYS[7]  cancelled zset
--   KEYS[8]  dedupe hash       KEYS[9]  paused flag       KEYS[10] events stream
--   KEYS[11] seq counter       KEYS[12] front counter
-- and the same ARGV header:
--   ARGV[1]  wake-up channel   ARGV[2]  events stream max length   ARGV[3]  queue name
-- Operation arguments start at ARGV[4].
local K_JOB, K_PENDING, K_SCHEDULED, K_RUNNING = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_COMPLETED, K_FAILED, K_CANCELLED = KEYS[5], KEYS[6], KEYS[7]
local K_DEDUPE, K_PAUSED, K_EVENTS, K_SEQ, K_FRONT = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local WAKE_CHANNEL, EVENTS_MAXLEN, QUEUE = ARGV[1], ARGV[2], ARGV[3]

-- Redis TIME is the one clock for due times and lease deadlines, whatever the clients'
-- clocks say.
local _t = redis.call('TIME')
local NOW = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)

local BAND = 17592186044416 -- 2^44: one score band per priority (keys.py BAND)
local MID = 8796093022208 -- 2^43: FIFO counts up from here, released jobs count down

local BY_STATE = {
  pending = K_PENDING, scheduled = K_SCHEDULED, running = K_RUNNING,
  completed = K_COMPLETED, failed = K_FAILED, cancelled = K_CANCELLED,
}

-- Lua turns numbers into strings with 14 significant digits; scores need all 16.
local function num(n)
  return string.format('%.0f', n)
end

local wake_needed = false

-- Push a job into pending (state, score, index); `front` puts it before every job of
-- its priority (release on shutdown).
local function push_pending(id, jk, front, priority)
  priority = priority or tonumber(redis.call('HGET', jk, 'priority')) or 0
  local score
  if front then
    score = (100 - priority) * BAND + MID - redis.call('INCR', K_FRONT)
  else
    score = (100 - priority) * BAND + MID + redis.call('INCR', K_SEQ)
  end
  redis.call('ZADD', K_PENDING, num(score), id)
  redis.call('HSET', jk, 'state', 'pending')
  redis.call('HDEL', jk, 'scheduled_ms')
  -- Idle workers only sleep after a claim found pending empty, so the empty -> non-empty
  -- transition is the one moment that needs a wake-up.
  if redis.call('ZCARD', K_PENDING) == 1 then
    wake_needed = true
  end
end

-- Publish a wake-up if this script refilled an empty pending set (and work is claimable).
local function wake()
  if wake_needed and redis.call('EXISTS', K_PAUSED) == 0
      and redis.call('ZCARD', K_PENDING) > 0 then
    redis.call('PUBLISH', WAKE_CHANNEL, QUEUE)
  end
end

local function schedule(id, jk, due)
  redis.call('ZADD', K_SCHEDULED, num(due), id)
  redis.call('HSET', jk, 'state', 'scheduled', 'scheduled_ms', num(due))
end

local function emit(id, jk, kind, data)
  local f = redis.call('HMGET', jk, 'task', 'tenant', 'attempt')
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'kind', kind, 'job', id, 'task', f[1] or '', 'tenant', f[2] or '',
    'attempt', f[3] or '0', 'at', num(NOW), 'data', data or '{}')
end

-- A dedupe key belongs to a job only while it is scheduled, pending or running.
local function release_dedupe(id, jk)
  local key = redis.call('HGET', jk, 'dedupe_key')
  if key and key ~= '' and redis.call('HGET', K_DEDUPE, key) == id then
    redis.call('HDEL', K_DEDUPE, key)
  end
end

-- Move a job (already removed from its active zset) to a finished state.
local function finish(id, jk, state)
  redis.call('HSET', jk, 'state', state, 'finished_ms', num(NOW))
  redis.call('HDEL', jk, 'token')
  redis.call('ZADD', BY_STATE[state], num(NOW), id)
  release_dedupe(id, jk)
end

-- Errors are numbered fields err:1, err:2, ... (not err:<attempt>: an operator retry
-- starts attempts again at 1 and must not overwrite the history).
local function add_error(jk, err)
  if err and err ~= '' then
    local n = redis.call('HINCRBY', jk, 'nerr', 1)
    redis.call('HSET', jk, 'err:' .. n, err)
  end
end

local function error_message(err)
  local ok, obj = pcall(cjson.decode, err or '')
  if ok and type(obj) == 'table' and type(obj.message) == 'string' then
    return obj.message
  end
  return ''
end

-- Scheduled jobs whose due time has come become pending (bounded per call).
local function promote_due(limit)
  local ids = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', num(NOW), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', K_SCHEDULED, id)
    local jk = K_JOB .. id
    if redis.call('HGET', jk, 'state') == 'scheduled' then
      push_pending(id, jk, false, nil)
    end
  end
  return #ids
end

-- Running jobs whose lease deadline passed: back to pending, or failed when the attempt
-- was the last one (this is what ends crash loops). Bounded per call.
local function recover_expired(limit)
  local ids = redis.call('ZRANGEBYSCORE', K_RUNNING, '-inf', '(' .. num(NOW), 'LIMIT', 0, limit)
  local recovered = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', K_RUNNING, id)
    local jk = K_JOB .. id
    local f = redis.call('HMGET', jk, 'state', 'attempt', 'max_attempts')
    if f[1] == 'running' then
      recovered = recovered + 1
      local attempt = tonumber(f[2]) or 0
      redis.call('HDEL', jk, 'token')
      if attempt >= (tonumber(f[3]) or 1) then
        add_error(jk, cjson.encode({
          attempt = attempt, type = 'LeaseExpired',
          message = 'worker lost while running attempt ' .. attempt
            .. ' (killed or hung); lease expired',
          at = NOW / 1000,
        }))
        finish(id, jk, 'failed')
        emit(id, jk, 'failed', cjson.encode({ error = 'lease expired: worker lost' }))
      else
        push_pending(id, jk, false, nil)
        emit(id, jk, 'stalled', nil)
      end
    end
  end
  return recovered
end

-- Operator retry of a failed/cancelled job: a fresh attempt budget, errors kept.
local function retry_finished(id, jk, state)
  redis.call('ZREM', BY_STATE[state], id)
  redis.call('HSET', jk, 'attempt', 0)
  redis.call('HDEL', jk, 'finished_ms', 'result', 'token')
  local key = redis.call('HGET', jk, 'dedupe_key')
  if key and key ~= '' then
    redis.call('HSETNX', K_DEDUPE, key, id)
  end
  push_pending(id, jk, false, nil)
  emit(id, jk, 'enqueued', cjson.encode({ retried_by = 'operator' }))
end

-- The outcome of an admin operation on one job: its fields, or why not.
local function job_reply(jk)
  return { 'ok', redis.call('HGETALL', jk) }
end
