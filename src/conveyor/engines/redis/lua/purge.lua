-- purge: delete up to a batch of a queue's jobs, whatever their state; once none are
-- left, its dedupe keys too. Running jobs' workers will see their outcomes as lost.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: batch size
-- Returns: how many jobs were deleted (< batch: the queue is empty now).
-- Touches: every state zset (waiting too), the fifo, tpending, flow parents' :wait sets, the tenant state indexes, job hashes (DEL); once empty: dedupe, the tenant
--          buckets (every non-empty bucket is in ready), ready, served, trunning, rate
--          (DEL).
--          Limits are kept: they are configuration, not jobs.
local budget = tonumber(ARGV[5])
local deleted = 0
-- The fifo (pending jobs without a tenant, two entries each: see _lib.lua) first.
local entries = redis.call('LRANGE', K_FIFO, 0, budget * 2 - 1)
for i = 2, #entries, 2 do
  local id = fifo_id(entries[i])
  redis.call('DEL', K_JOB .. id, wait_key(id))
end
redis.call('LTRIM', K_FIFO, #entries, -1)
deleted = #entries / 2
for _, zkey in ipairs({ K_PENDING, K_TPENDING, K_SCHEDULED, K_RUNNING, K_COMPLETED, K_FAILED,
                        K_CANCELLED, K_PARENTS }) do
  if budget - deleted <= 0 then break end
  local ids = redis.call('ZRANGE', zkey, 0, budget - deleted - 1)
  for _, id in ipairs(ids) do
    local jk = K_JOB .. id
    -- A tenant job leaves its tenant's index of its state (pending: the buckets,
    -- dropped below once the queue is empty).
    local f = redis.call('HMGET', jk, 'state', 'tenant')
    if f[1] and f[1] ~= 'pending' and BY_STATE[f[1]] and f[2] and f[2] ~= '' then
      local tkey = tstate_key(f[1], f[2])
      redis.call('ZREM', tkey, id)
    end
    local wkey = wait_key(id) -- a flow parent's set of unfinished children
    redis.call('DEL', jk, wkey)
    redis.call('ZREM', zkey, id)
  end
  deleted = deleted + #ids
end
if deleted < budget then
  redis.call('DEL', K_DEDUPE)
  for _, tenant in ipairs(redis.call('ZRANGE', K_READY, 0, -1)) do
    if tenant ~= '' then
      local bucket = K_TBUCKET .. tenant
      redis.call('DEL', bucket)
    end
  end
  redis.call('DEL', K_READY, K_SERVED, K_TRUNNING, K_RATE)
end
return deleted
