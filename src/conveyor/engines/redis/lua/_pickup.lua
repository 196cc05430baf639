-- _pickup.lua: claiming a job for a worker, and the one-hop pickup. Prepended to
-- `enqueue` and `exchange` after _lib.lua (not an operation itself).
--
-- One-hop pickup: the reply that wakes an idle worker carries its job.
--
--   worker:   exchange: nothing claimable -> ZADD waiting        BLPOP inbox ... (blocks)
--   producer:                    enqueue: ZPOPMAX waiting, claim, RPUSH inbox -> BLPOP returns
--
-- A worker registers in K_WAITING only when its claim found nothing and no rule could
-- have held a job back (no queue limit, no tenant job pending, not paused); a
-- one-job enqueue hands its job over only then, when that job is the one the next claim
-- would take anyway (nothing pending). Everywhere else jobs go through pending and
-- the pub/sub wake-up as before, so fairness and limits are untouched. A handed job is
-- claimed exactly as `exchange` claims (running, token, lease deadline, `started`
-- event): a worker that dies with it in its inbox loses it to lease recovery like any
-- claimed job. The worker's next exchange drops its registration and takes what its
-- inbox still holds (see `take_inbox`), so a job is never left between the two.

-- Rate logs are counted by score (ZREMRANGEBYSCORE before each count); their expiry only
-- collects the logs of queues and tenants that stopped starting jobs. It is kept well past
-- the window: key expiry runs on the server's time at the start of the script, the scores
-- on TIME read after it, so an expiry of exactly one window could drop a log up to a ms
-- before its newest start left the window.
local RATE_LOG_KEEP_MS = 60000

local function log_start(tkey, token, at, window_ms)
  redis.call('ZADD', tkey, at, token)
  redis.call('PEXPIRE', tkey, window_ms + RATE_LOG_KEEP_MS)
end

-- Set field `k` of a flat HGETALL reply `all` (`at`: field -> index of its value).
local function patch(all, at, k, v)
  local i = at[k]
  if i then
    all[i] = v
  else
    all[#all + 1] = k
    all[#all + 1] = v
  end
end

-- Claim pending job `id` (already out of its bucket, where its score was `score`) of
-- bucket `tenant` ('' = none) for `worker`: running until `deadline`, fenced by `token`.
-- Returns the job's fields as a flat HGETALL array, or false if it was a stale entry (not
-- pending any more). The score goes into the hash in the claim's write (a job stored
-- pending has none: see new_job_fields): a lease that expires puts the job back there.
local function claim_job(id, token, tenant, worker, started, deadline, lim, score)
  local jk = K_JOB .. id
  -- One read of the whole job: it is the reply, and it has what the checks and the event
  -- need; the fields this claim changes are written once and patched into the reply.
  local all = redis.call('HGETALL', jk)
  local at = {}
  for i = 1, #all, 2 do at[all[i]] = i + 1 end
  if at.state == nil or all[at.state] ~= 'pending' then
    return false
  end
  local attempt = tostring((tonumber(all[at.attempt]) or 0) + 1)
  redis.call('HSET', jk, 'state', 'running', 'attempt', attempt, 'token', token,
    'started_ms', started, 'worker', worker, 'score', score)
  patch(all, at, 'state', 'running')
  patch(all, at, 'attempt', attempt)
  patch(all, at, 'token', token)
  patch(all, at, 'started_ms', started)
  patch(all, at, 'worker', worker)
  -- The id is not stored in the hash (its key has it; see new_job_fields): the reply
  -- carries it for the worker.
  patch(all, at, 'id', id)
  redis.call('ZADD', K_RUNNING, deadline, id)
  if tenant ~= '' then
    -- Scored by claim time, not the deadline: heartbeats then need not touch it.
    local tkey = tstate_key('running', tenant)
    redis.call('ZADD', tkey, started, id)
  end
  emit(id, jk, 'started', nil, all[at.task], all[at.tenant], attempt)
  if lim.rate then
    log_start(K_RATE, token, started, lim.rate_window_ms)
  end
  if tenant ~= '' then
    redis.call('HINCRBY', K_TRUNNING, tenant, 1)
    if lim.tenant_rate then
      log_start(K_TRATE .. tenant, token, started, lim.tenant_rate_window_ms)
    end
  end
  return all
end

local function waiter(worker, lease_ms)
  return lease_ms .. ':' .. worker
end

-- Nothing could hold a job of this queue back: no limit, nothing pending, not paused.
local function open_for_pickup(lim)
  return not lim.any and untenanted_empty()
    and redis.call('ZCARD', K_TPENDING) == 0 and redis.call('EXISTS', K_PAUSED) == 0
end

-- enqueue: claim just-stored pending job `id` (no tenant, in no bucket; its pending score
-- `score`) for the most recently registered live waiter and push it to its inbox; false if
-- there is none or the job must go through pending.
local function hand_off(id, score)
  if redis.call('ZCARD', K_WAITING) == 0 then return false end
  local lim = read_limits()
  if not open_for_pickup(lim) then return false end
  redis.call('ZREMRANGEBYSCORE', K_WAITING, '-inf', num(NOW)) -- lapsed (the worker died?)
  local w = redis.call('ZPOPMAX', K_WAITING)
  if not w[1] then return false end
  local lease_ms, worker = string.match(w[1], '^(%d+):(.*)$')
  local started = num(NOW)
  local token = num(redis.call('INCR', K_SEQ)) .. '-' .. started
  local all = claim_job(id, token, '', worker, started, num(NOW + tonumber(lease_ms)), lim,
    num(score))
  if not all then return false end
  local inbox = K_INBOX .. worker
  redis.call('RPUSH', inbox, cjson.encode(all))
  -- Collected if nobody reads it: the jobs in it are recovered when their leases expire.
  redis.call('PEXPIRE', inbox, lease_ms)
  return true
end

-- exchange: drop `worker`'s registration and take the jobs its inbox still holds (flat
-- HGETALL arrays, already claimed for it).
local function take_inbox(worker, lease_ms)
  redis.call('ZREM', K_WAITING, waiter(worker, lease_ms))
  local jobs = {}
  local inbox = K_INBOX .. worker
  local held = redis.call('LPOP', inbox, 1000)
  if held then
    for _, raw in ipairs(held) do
      if raw ~= '' then jobs[#jobs + 1] = cjson.decode(raw) end -- '': see stop_handoffs
    end
  end
  return jobs
end

-- exchange: an idle worker (its claim found nothing) waits for a handed job for
-- `wait_ms`; 1 if it is registered, 0 if the queue is not open for pickup.
local function register_waiter(worker, lease_ms, wait_ms, lim)
  if not open_for_pickup(lim) then return 0 end
  redis.call('ZADD', K_WAITING, num(NOW + wait_ms), waiter(worker, lease_ms))
  return 1
end
