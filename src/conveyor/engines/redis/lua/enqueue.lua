-- enqueue: store a batch of new jobs of one queue in one script call. The app validated
-- every field, so no write fails half way: the batch is stored all or nothing.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: n, the number of jobs; then 11 values per job:
--          id, task, payload json, max_attempts, priority, tenant, dedupe_key,
--          timeout_ms, backoff json, delay_ms, run_at_ms  ('' = none)
--          (validated by the app before they get here: numbers are numbers)
-- Returns: flat array, 3 values per job in input order: id, created (1/0), state
--          (running: handed to an idle worker).
--          A dedupe key held by an active job (or an id that already exists, i.e. a
--          retried call whose reply was lost) yields that job with created = 0.
-- Touches: job hashes, a one-job call whose job an idle worker takes: waiting, its inbox,
--          running (see _pickup.lua); pending (tenant jobs: tpending, their bucket, ready; reads served) or scheduled
--          (tenant jobs: also ts:scheduled:<tenant>),
--          dedupe, seq, events (one entry per 64 events, see flush_events); PUBLISH on the wake channel when a bucket was empty.
local W = 11
local n = tonumber(ARGV[5])

local out = {}
-- The batch's events share stream entries (see flush_events, before return): one XADD
-- per 64 jobs of a bulk enqueue instead of one per job.
held_events = {}
-- The batch's places in line, taken with one INCRBY (job i gets seq0 + i + 1).
local seq0 = redis.call('INCRBY', K_SEQ, n) - n
-- Once a job of this call is in K_FIFO or K_PENDING the bucket is not empty: no look per
-- job after that.
local filled = false
for i = 0, n - 1 do
  local b = 6 + i * W
  local id = ARGV[b]
  local dedupe_key = ARGV[b + 6]
  local jk = K_JOB .. id
  local holder, holder_state = false, false
  if dedupe_key ~= '' then
    local other = redis.call('HGET', K_DEDUPE, dedupe_key)
    if other then
      local st = redis.call('HGET', K_JOB .. other, 'state')
      if LIVE[st] then
        holder, holder_state = other, st
      end
    end
  end
  if not holder then
    local st = redis.call('HGET', jk, 'state')
    if st then
      holder, holder_state = id, st
    end
  end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
    out[#out + 1] = holder_state
  else
    local priority = tonumber(ARGV[b + 4])
    local tenant = ARGV[b + 5]
    local due = NOW + tonumber(ARGV[b + 9])
    if ARGV[b + 10] ~= '' then
      due = tonumber(ARGV[b + 10])
    end
    local state = 'pending'
    if due > NOW then state = 'scheduled' end
    -- One write per job. Optional fields are left out rather than stored empty: less
    -- memory per job. A scheduled job gets its score too: it orders jobs due in the
    -- same ms (promote_due).
    local score = pending_score(priority, 'back', nil, seq0 + i + 1)
    local fields = new_job_fields(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], priority, state, score)
    opt_field(fields, 'tenant', tenant)
    opt_field(fields, 'dedupe_key', dedupe_key)
    opt_field(fields, 'timeout_ms', ARGV[b + 7])
    opt_field(fields, 'backoff', ARGV[b + 8])
    if state == 'scheduled' then opt_field(fields, 'scheduled_ms', num(due)) end
    redis.call('HSET', jk, unpack(fields))
    if dedupe_key ~= '' then
      redis.call('HSET', K_DEDUPE, dedupe_key, id)
    end
    emit(id, jk, 'enqueued', nil, ARGV[b + 1], tenant, '0')
    if state == 'scheduled' then
      index(id, 'scheduled', due, tenant)
    -- One job (a batch keeps its order through pending) may go straight to an idle
    -- worker: see _pickup.lua.
    elseif tenant == '' then
      local was_empty = false
      if not filled then was_empty = untenanted_empty() end
      if was_empty and n == 1 and hand_off(id, score) then
        state = 'running'
      else
        index_pending(id, score, tenant, was_empty, priority == 0)
        filled = true
      end
    else
      index_pending(id, score, tenant)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
    out[#out + 1] = state
  end
end
wake()
flush_events()
return out
