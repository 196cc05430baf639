-- _flows.lua: flows (lifecycle rule 6), prepended after _lib.lua to every per-queue
-- script (not an operation itself). A flow lives in one queue, so every key here carries
-- the queue's tag.
--
-- A child's hash has `parent` (its parent's id) and `policy` (lifecycle.FLOW_POLICIES);
-- a parent's hash has `children` (JSON list of ids, in the order given), and while it
-- waits, K_JOB .. id .. ':wait' is the set of its unfinished children (derived from the
-- job hash's name: same tag, same slot; an empty set is deleted by Redis itself).

-- Cancel a live job because its flow parent ended (`why`): out of its index, its slot
-- freed, finished (which settles it in turn: its own children go too).
local function cancel_in_flow(kid, why)
  local kjk = K_JOB .. kid
  local ks = redis.call('HGET', kjk, 'state')
  if not LIVE[ks] then return end
  if ks == 'pending' then
    remove_pending(kid, kjk)
  else
    unindex(kid, ks, nil)
  end
  if ks == 'running' then
    left_running(redis.call('HGET', kjk, 'tenant'), nil)
  end
  finish(kid, kjk, 'cancelled')
  emit(kid, kjk, 'cancelled', cjson.encode({ reason = why }))
end

-- Called by finish() for every job that reaches a finished `state`, in the same script.
settled = function(id, jk, state)
  local f = redis.call('HMGET', jk, 'parent', 'policy', 'children')
  if not f[1] and not f[3] then return end -- not part of a flow: the common case
  if f[3] and state ~= 'completed' then
    local why = 'flow parent ' .. id .. ' ended ' .. state
    for _, kid in ipairs(cjson.decode(f[3])) do
      cancel_in_flow(kid, why)
    end
  end
  if not f[1] then return end
  local pid = f[1]
  local pjk = K_JOB .. pid
  redis.call('SREM', pjk .. ':wait', id)
  if redis.call('HGET', pjk, 'state') ~= WAITING then return end
  if fails_parent(state, f[2]) then
    unindex(pid, WAITING, nil)
    add_error(pjk, cjson.encode({
      attempt = 0, type = CHILD_FAILED_TYPE, message = child_failed_message(id, state),
      at = NOW / 1000,
    }))
    finish(pid, pjk, 'failed')
    emit(pid, pjk, 'failed', cjson.encode({ error = 'child ' .. id .. ' ended ' .. state }))
  elseif redis.call('SCARD', pjk .. ':wait') == 0 then
    unindex(pid, WAITING, nil)
    push_pending(pid, pjk, 'back')
    emit(pid, pjk, FLOW_READY_EVENT, nil)
  end
end

-- A finished (failed or cancelled) parent waits again: its dedupe key back (false when
-- another live job holds it now: it stays as it is), its cancelled children back
-- (pending, or waiting again when they have children), its wait set rebuilt.
local function rearm(pid, pjk, st)
  local key = redis.call('HGET', pjk, 'dedupe_key')
  if key and key ~= '' then
    local holder = redis.call('HGET', K_DEDUPE, key)
    if holder and holder ~= pid and LIVE[redis.call('HGET', K_JOB .. holder, 'state')] then
      return false
    end
    redis.call('HSET', K_DEDUPE, key, pid)
  end
  unindex(pid, st, nil)
  redis.call('HSET', pjk, 'state', WAITING, 'attempt', 0)
  redis.call('HDEL', pjk, 'finished_ms', 'result', 'token')
  local f = redis.call('HMGET', pjk, 'tenant', 'created_ms')
  index(pid, WAITING, tonumber(f[2]) or NOW, f[1]) -- newest first, like at enqueue
  emit(pid, pjk, 'enqueued', cjson.encode({ retried_by = 'operator', flow = 're-armed' }))
  local wait = pjk .. ':wait'
  redis.call('DEL', wait)
  for _, kid in ipairs(cjson.decode(redis.call('HGET', pjk, 'children') or '[]')) do
    local kjk = K_JOB .. kid
    local ks = redis.call('HGET', kjk, 'state')
    if ks == 'cancelled' then
      if redis.call('HEXISTS', kjk, 'children') == 1 then
        rearm(kid, kjk, ks)
      else
        retry_finished(kid, kjk, ks)
      end
      ks = redis.call('HGET', kjk, 'state')
    end
    if LIVE[ks] then redis.call('SADD', wait, kid) end
  end
  return true
end

-- After an operator retry of `id`: its failed parent, and each failed ancestor above it,
-- waits again.
rearm_parent = function(id, jk)
  local pid = redis.call('HGET', jk, 'parent')
  while pid do
    local pjk = K_JOB .. pid
    local st = redis.call('HGET', pjk, 'state')
    if st ~= 'failed' or not rearm(pid, pjk, st) then return end
    pid = redis.call('HGET', pjk, 'parent')
  end
end
