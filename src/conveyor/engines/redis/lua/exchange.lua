-- exchange: the worker's one round trip per queue: apply outcomes, then claim.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: worker id     ARGV[6]: lease_ms     ARGV[7]: limit (0 = outcomes only)
-- ARGV[8]: n outcomes; then 5 values per outcome:
--          job id, token, kind (a key of TRANSITIONS: complete|retry|fail|release|defer),
--          body, delay_ms (body: the result json for complete, the error json for
--          retry/fail, '' for release, the reason for defer; see `apply` in _lib.lua)
--          then wait_ms, registered ('1'/'0'): the one-hop pickup (see _pickup.lua)
-- Returns: { lost ids, ms until the next scheduled job is due or a rate window that held
--            jobs back reopens (-1: neither), claimed jobs (each a flat HGETALL array,
--            jobs handed to this worker first), expired leases recovered,
--            1 if the worker is now registered to take a handed job }
-- Touches: job hashes, every state zset, the buckets (pending, fifo, tpending, tp:<tenant>),
--          the tenant state indexes (ts:<state>:<tenant>),
--          ready, served, trunning, rate logs, turn, dedupe, seq, front, events (one entry
--          per 64 events, see flush_events), waiting and
--          the worker's inbox (see _pickup.lua); PUBLISH on the
--          wake channel when work became claimable (a bucket refilled, or a job of a
--          queue with a concurrency limit stopped running) and some is left after the claim.
--
-- Order: outcomes first (a released job may be claimed again at once, a finished job
-- frees its slot for this claim), then, when limit > 0: promote due scheduled jobs and
-- recover expired leases (bounded batches), then claim unless the queue is paused.
--
-- Limits are checked and taken in this one script, so they hold for the whole fleet:
--   worker A: exchange reads running = 4 of 5, claims 1 -> running = 5
--   worker B: exchange (runs after A's, never interleaved) reads 5 of 5, claims none
-- Redis runs scripts one at a time, so no second claim can read a count between
-- another claim's read and write.
local worker, lease_ms, limit = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local n = tonumber(ARGV[8])
-- After the outcomes: ms an idle worker waits for a handed job (0: it takes none), and
-- '1' when its last exchange registered it (see _pickup.lua).
local wait_ms = tonumber(ARGV[9 + n * 5]) or 0
local registered = ARGV[10 + n * 5] == '1'
-- Check every kind before the first write: Redis does not roll back a script that fails
-- half way.
for i = 0, n - 1 do
  local kind = ARGV[9 + i * 5 + 2]
  if TRANSITIONS[kind] == nil then
    return redis.error_reply('ERR conveyor exchange: unknown outcome kind ' .. tostring(kind))
  end
end

-- Every event of this call goes into one stream entry (see flush_events, before return).
held_events = {}
local lim = read_limits()
local lost = {}
for i = 0, n - 1 do
  local b = 9 + i * 5
  local id, token = ARGV[b], ARGV[b + 1]
  local jk = K_JOB .. id
  -- One read of what the outcome needs, the flow fields included (see settled).
  local f = redis.call('HMGET', jk, 'state', 'token', 'tenant', 'task', 'attempt', 'dedupe_key',
    'parent', 'policy', 'children')
  -- The token fences a worker that lost its lease: it may not touch the job any more.
  if f[1] ~= 'running' or f[2] ~= token then
    lost[#lost + 1] = id
  else
    unindex(id, 'running', f[3] or false)
    apply(id, jk, TRANSITIONS[ARGV[b + 2]], ARGV[b + 3], tonumber(ARGV[b + 4]) or 0,
      f[3], f[4], f[5], f[6], lim, nil, { f[7], f[8], f[9] })
  end
end

-- ms until a rate window that held jobs back reopens (-1: none did).
local hint = -1
local function hold(tkey, window_ms)
  local oldest = redis.call('ZRANGE', tkey, 0, 0, 'WITHSCORES')
  local wait = window_ms
  if oldest[2] then wait = tonumber(oldest[2]) + window_ms - NOW end
  if hint < 0 or wait < hint then hint = wait end
end

-- Starts inside a sliding window: drop the ones that left it, count the rest.
local function starts(tkey, window_ms)
  redis.call('ZREMRANGEBYSCORE', tkey, '-inf', num(NOW - window_ms))
  return redis.call('ZCARD', tkey)
end

local claimed = {}
local recovered = 0
local deadline = num(NOW + lease_ms)
local started = num(NOW)

-- Claim one popped job (its score in its bucket: `score`) of bucket `tenant` ('' = none);
-- false if it was a stale entry.
local function claim(id, token, tenant, score)
  local all = claim_job(id, token, tenant, worker, started, deadline, lim, score)
  if not all then return false end
  claimed[#claimed + 1] = all
  return true
end

-- One-hop pickup (see _pickup.lua): jobs handed to this worker since its last exchange.
if registered then
  claimed = take_inbox(worker, lease_ms)
end

if limit > 0 then
  promote_due(PROMOTE_BATCH)
  recovered = recover_expired(RECOVER_BATCH, lim)
  local room = limit - #claimed
  if lim.concurrency then
    room = math.min(room, lim.concurrency - redis.call('ZCARD', K_RUNNING))
  end
  if lim.rate then
    local used = starts(K_RATE, lim.rate_window_ms)
    if used >= lim.rate then hold(K_RATE, lim.rate_window_ms) end
    room = math.min(room, lim.rate - used)
  end
  if room > 0 and redis.call('EXISTS', K_PAUSED) == 0 then
    if not lim.any and redis.call('ZCARD', K_TPENDING) == 0 then
      -- No limits and no tenant jobs pending: the best jobs are simply the first ones
      -- (the path of a queue without tenants, as fast as before fairness existed). It
      -- skips the rotation's bookkeeping; a queue with limits always takes turns, so
      -- the bucket of jobs without a tenant is on record as served (as on SQLite).
      local popped = pop_untenanted(room)
      local count = #popped / 2
      if count > 0 then
        -- One INCRBY for all tokens of this claim: unique per queue, never reused.
        local last = redis.call('INCRBY', K_SEQ, count)
        for j = 1, count do
          claim(popped[j * 2 - 1], num(last - count + j) .. '-' .. started, '', popped[j * 2])
        end
      end
    else
      -- Tenants take turns: serve the least recently served bucket, one job per turn
      -- (all `room` when it is the only one), and send it to the back of the line,
      -- whether it took a job or passed because it is at its limit (so tenants at their
      -- limit never sit in front of the others). A bucket found empty leaves.
      local budget = room + TURN_BUDGET
      while room > 0 and budget > 0 do
        local ready = redis.call('ZRANGE', K_READY, 0, ROTATION_PAGE - 1)
        if #ready == 0 then break end
        local served = false
        for _, tenant in ipairs(ready) do
          if room <= 0 or budget <= 0 then break end
          budget = budget - 1
          if bucket_len(tenant) == 0 then
            leave_rotation(tenant)
          else
            local allowed = 1
            if #ready == 1 then allowed = room end
            if tenant ~= '' then -- jobs without a tenant are not subject to tenant limits
              if lim.tenant_concurrency then
                local busy = tonumber(redis.call('HGET', K_TRUNNING, tenant)) or 0
                allowed = math.min(allowed, lim.tenant_concurrency - busy)
              end
              if lim.tenant_rate then
                local tkey = K_TRATE .. tenant
                local used = starts(tkey, lim.tenant_rate_window_ms)
                if used >= lim.tenant_rate then hold(tkey, lim.tenant_rate_window_ms) end
                allowed = math.min(allowed, lim.tenant_rate - used)
              end
            end
            redis.call('ZADD', K_READY, redis.call('INCR', K_TURN), tenant)
            if allowed > 0 then
              local popped
              if tenant == '' then
                popped = pop_untenanted(allowed)
              else
                popped = redis.call('ZPOPMIN', K_TBUCKET .. tenant, allowed)
              end
              for j = 1, #popped, 2 do
                local id = popped[j]
                if tenant ~= '' then redis.call('ZREM', K_TPENDING, id) end
                local token = num(redis.call('INCR', K_SEQ)) .. '-' .. started
                if claim(id, token, tenant, popped[j + 1]) then
                  room = room - 1
                  served = true
                end
              end
              if bucket_len(tenant) == 0 then
                leave_rotation(tenant)
              end
            end
          end
        end
        if not served then break end
      end
    end
  end
end

local next_due = -1
local first = redis.call('ZRANGE', K_SCHEDULED, 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - NOW)
end
if hint >= 0 and (next_due < 0 or hint < next_due) then
  next_due = math.max(0, hint)
end
local waiting = 0
if wait_ms > 0 and limit > 0 and #claimed == 0 then
  waiting = register_waiter(worker, lease_ms, wait_ms, lim)
end
wake(lim)
flush_events()
return { lost, next_due, claimed, recovered, waiting }
