-- _flows.lua: flows (lifecycle rule 6), prepended after _lib.lua to every per-queue
-- script (not an operation itself). A flow lives in one queue, so every key here carries
-- the queue's tag.
--
-- A child's hash has `parent` (its parent's id) and `policy` (lifecycle.FLOW_POLICIES);
-- a parent's hash has `children` (JSON list of ids, in the order given), and while it
-- waits, K_JOB .. id .. ':wait' is the set of its unfinished children (derived from the
-- job hash's name: same tag, same slot; an empty set is deleted by Redis itself).

-- The set of a waiting parent's unfinished children (same tag as its hash: same slot).
local function wait_key(id)
  return K_JOB .. id .. ':wait'
end

-- Cancel a live job because its flow parent ended (`why`): out of its index, its slot
-- freed, finished (which settles it in turn: its own children go too).
local function cancel_in_flow(kid, why)
  local ks = redis.call('HGET', K_JOB .. kid, 'state')
  if not LIVE[ks] then return end
  if ks == 'pending' then
    remove_pending(kid, K_JOB .. kid)
  else
    unindex(kid, ks, nil)
  end
  if ks == 'running' then
    left_running(redis.call('HGET', K_JOB .. kid, 'tenant'), nil)
  end
  finish(kid, K_JOB .. kid, 'cancelled')
  emit(kid, K_JOB .. kid, 'cancelled', cjson.encode({ reason = why }))
end

-- Called by finish() for every job that reaches a finished `state`, in the same script.
-- `links`: the job's { parent, policy, children } fields if the caller read them (the hot
-- paths do, in the HMGET they make anyway: one command fewer per finished job), nil =
-- read them here.
settled = function(id, jk, state, links)
  local f = links or redis.call('HMGET', jk, 'parent', 'policy', 'children')
  if not f[1] and not f[3] then return end -- not part of a flow: the common case
  if f[3] and state ~= 'completed' then
    local why = 'flow parent ' .. id .. ' ended ' .. state
    for _, kid in ipairs(cjson.decode(f[3])) do
      cancel_in_flow(kid, why)
    end
  end
  if not f[1] then return end
  local pid = f[1]
  local wkey = wait_key(pid)
  redis.call('SREM', wkey, id)
  if redis.call('HGET', K_JOB .. pid, 'state') ~= WAITING then return end
  if fails_parent(state, f[2]) then
    unindex(pid, WAITING, nil)
    add_error(K_JOB .. pid, cjson.encode({
      attempt = 0, type = CHILD_FAILED_TYPE, message = child_failed_message(id, state),
      at = NOW / 1000,
    }))
    finish(pid, K_JOB .. pid, 'failed')
    emit(pid, K_JOB .. pid, 'failed', cjson.encode({ error = 'child ' .. id .. ' ended ' .. state }))
  elseif redis.call('SCARD', wkey) == 0 then
    unindex(pid, WAITING, nil)
    push_pending(pid, K_JOB .. pid, 'back')
    emit(pid, K_JOB .. pid, FLOW_READY_EVENT, nil)
  end
end

-- A finished job coming back takes its dedupe key again; false (nothing changed) when
-- another live job holds it now (lifecycle rule 1: it stays as it is).
local function take_key(id)
  local key = redis.call('HGET', K_JOB .. id, 'dedupe_key')
  if key and key ~= '' then
    local holder = redis.call('HGET', K_DEDUPE, key)
    if holder and holder ~= id and LIVE[redis.call('HGET', K_JOB .. holder, 'state')] then
      return false
    end
    redis.call('HSET', K_DEDUPE, key, id)
  end
  return true
end

-- A childless job its parent's failure cancelled comes back as an operator retry does,
-- but at its own due time: scheduled while that is still ahead (a delayed child keeps
-- its delay), pending otherwise.
local function rearm_leaf(kid, ks)
  local jk = K_JOB .. kid
  local due = tonumber(redis.call('HGET', jk, 'scheduled_ms'))
  if not due or due <= NOW then
    retry_finished(kid, jk, ks)
    return
  end
  if not take_key(kid) then return end
  unindex(kid, ks, nil)
  redis.call('HSET', jk, 'attempt', 0)
  redis.call('HDEL', jk, 'finished_ms', 'result', 'token')
  schedule(kid, jk, due, nil)
  emit(kid, jk, 'enqueued', cjson.encode({ retried_by = 'operator' }))
end

local rearm

-- A parent in no state index waits again: its children that come back come back
-- (pending or scheduled, or waiting again when they have children), its wait set is
-- rebuilt, and with no unfinished child left it is pending at once.
-- (Which children come back: lifecycle.comes_back, templated into the prelude.)
local function wait_again(pid)
  local jk = K_JOB .. pid
  redis.call('HSET', jk, 'state', WAITING)
  redis.call('HDEL', jk, 'scheduled_ms')
  local f = redis.call('HMGET', jk, 'tenant', 'created_ms')
  index(pid, WAITING, tonumber(f[2]) or NOW, f[1]) -- newest first, like at enqueue
  emit(pid, jk, 'enqueued', cjson.encode({ retried_by = 'operator', flow = 're-armed' }))
  local wkey = wait_key(pid)
  redis.call('DEL', wkey)
  for _, kid in ipairs(cjson.decode(redis.call('HGET', jk, 'children') or '[]')) do
    local ks = redis.call('HGET', K_JOB .. kid, 'state')
    if comes_back(ks, redis.call('HGET', K_JOB .. kid, 'policy')) then
      if redis.call('HEXISTS', K_JOB .. kid, 'children') == 1 then
        rearm(kid, ks)
      else
        rearm_leaf(kid, ks)
      end
      ks = redis.call('HGET', K_JOB .. kid, 'state')
    end
    if LIVE[ks] then redis.call('SADD', wkey, kid) end
  end
  if redis.call('SCARD', wkey) == 0 then
    unindex(pid, WAITING, nil)
    push_pending(pid, jk, 'back')
  end
end

-- A finished (failed or cancelled) parent waits again (wait_again), its dedupe key back;
-- false when another live job holds that key now: it stays as it is.
rearm = function(pid, st)
  if not take_key(pid) then return false end
  unindex(pid, st, nil)
  redis.call('HSET', K_JOB .. pid, 'attempt', 0)
  redis.call('HDEL', K_JOB .. pid, 'finished_ms', 'result', 'token')
  wait_again(pid)
  return true
end

-- After an operator retry of `id`: if it is a parent, it waits again for its children
-- (wait_again); its failed parent, and each failed ancestor above it, waits again.
rearm_parent = function(id, jk)
  if redis.call('HEXISTS', jk, 'children') == 1 and redis.call('HGET', jk, 'state') == 'pending' then
    remove_pending(id, jk)
    wait_again(id)
  end
  local pid = redis.call('HGET', jk, 'parent')
  while pid do
    local st = redis.call('HGET', K_JOB .. pid, 'state')
    if st ~= 'failed' or not rearm(pid, st) then return end
    pid = redis.call('HGET', K_JOB .. pid, 'parent')
  end
end
