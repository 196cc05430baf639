-- _lib.lua: helpers prepended to every per-queue script (not an operation itself).
--
-- Before it at load come `conveyor.lifecycle.lua_prelude()` (the shared constants,
-- TRANSITIONS and the state sets LIVE / RETRYABLE / CANCELLABLE / PROMOTABLE: the job
-- rules are decided there, these scripts only apply them) and `_clock.lua`.
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
--   KEYS[13] tenant pending zset (every tenant's pending jobs; KEYS[2] holds the rest)
--   KEYS[14] tenant bucket prefix "{p:q}:tp:"  (a tenant's pending zset is KEYS[14] ..
--            tenant: derived like a job hash, same tag, same slot)
--   KEYS[15] ready zset (the rotation of buckets)   KEYS[16] running-per-tenant hash
--   KEYS[17] limits hash       KEYS[18] queue rate log zset
--   KEYS[19] tenant rate log prefix "{p:q}:trate:"   KEYS[20] turn counter
--   KEYS[21] served hash (bucket -> the turn it was last served at, kept while the
--            bucket is out of the rotation)
--   KEYS[22] tenant state index prefix "{p:q}:ts:" (a tenant's jobs in a state other
--            than pending are in KEYS[22] .. state .. ':' .. tenant: derived like a
--            bucket, same tag, same slot; see index / unindex)
--   KEYS[23] waiting zset (idle workers that take handed jobs; see _pickup.lua)
--   KEYS[24] inbox prefix "{p:q}:inbox:" (a worker's handed jobs: KEYS[24] .. worker)
--   KEYS[25] parents zset (flow parents in waiting-children; see _flows.lua)
--   KEYS[26] fifo list (pending jobs without a tenant at priority 0, queued at the back:
--            most jobs; see FIFO_BASE)
-- and the same ARGV header:
--   ARGV[1]  wake-up channel   ARGV[2]  events stream max length (UNSTREAMED_MAXLEN:
--            the queue has no event log, see emit)   ARGV[3]  queue name
--   ARGV[4]  now in ms from a test clock, or '' (production: Redis TIME, see _clock.lua)
-- Operation arguments start at ARGV[5].
local K_JOB, K_PENDING, K_SCHEDULED, K_RUNNING = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_COMPLETED, K_FAILED, K_CANCELLED = KEYS[5], KEYS[6], KEYS[7]
local K_DEDUPE, K_PAUSED, K_EVENTS, K_SEQ, K_FRONT = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local K_TPENDING, K_TBUCKET, K_READY, K_TRUNNING = KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local K_LIMITS, K_RATE, K_TRATE, K_TURN = KEYS[17], KEYS[18], KEYS[19], KEYS[20]
local K_SERVED, K_TSTATE, K_WAITING, K_INBOX = KEYS[21], KEYS[22], KEYS[23], KEYS[24]
local K_PARENTS, K_FIFO = KEYS[25], KEYS[26]
local WAKE_CHANNEL, EVENTS_MAXLEN, QUEUE = ARGV[1], ARGV[2], ARGV[3]
local NOW = clock_ms(ARGV[4])

local BY_STATE = {
  pending = K_PENDING, scheduled = K_SCHEDULED, running = K_RUNNING,
  completed = K_COMPLETED, failed = K_FAILED, cancelled = K_CANCELLED,
  [WAITING] = K_PARENTS,
}

-- Flows (defined in _flows.lua, after this file): a flow job that finished tells its
-- parent and its children inside the same script (lifecycle rule 6); an operator retry
-- of a child re-arms its failed parent.
local settled, rearm_parent

-- Lua turns numbers into strings with 14 significant digits; scores need all 16.
local function num(n)
  return string.format('%.0f', n)
end

local wake_needed = false

-- Append field `name` to a list of HSET arguments unless `value` is '' (absent = none).
local function opt_field(fields, name, value)
  if value ~= '' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end

-- A new job's hash, as HSET arguments (the caller appends its optional fields with
-- opt_field). Left out, to save memory per job: what the key already says (the id and,
-- through it, the queue: the readers take them from the key, and jobs stored before
-- still carry both, with the same values), and the fields equal to their default:
-- attempt 0, priority 0, max_attempts DEFAULT_MAX_ATTEMPTS. Every reader applies these
-- defaults (`tonumber(x) or default` here, `conveyor.job.decode_job` in Python).
-- A pending job's `score` is its entry's score in its bucket, and the claim that pops it
-- writes it into the hash (see claim_job), so it is stored only for the other states.
local function new_job_fields(task, payload, max_attempts, priority, state, score)
  local fields = { 'task', task, 'payload', payload, 'created_ms', num(NOW), 'state', state }
  if state ~= 'pending' then opt_field(fields, 'score', num(score)) end
  if tonumber(max_attempts) ~= DEFAULT_MAX_ATTEMPTS then
    opt_field(fields, 'max_attempts', max_attempts)
  end
  if tonumber(priority) ~= 0 then opt_field(fields, 'priority', priority) end
  return fields
end

-- A tenant's index of a state (keys.py `tenant_state`): the state is a fixed word, so
-- the name stays unambiguous whatever the tenant holds.
local function tstate_key(state, tenant)
  return K_TSTATE .. state .. ':' .. tenant
end

-- Index a job in `state` (not pending) under `score`: the state's zset, and for a tenant
-- job its tenant's zset of that state too (tenant listings read one range of it
-- instead of skipping other tenants' jobs). `tenant`: '' or nil = none.
local function index(id, state, score, tenant)
  redis.call('ZADD', BY_STATE[state], num(score), id)
  if tenant and tenant ~= '' then
    local tkey = tstate_key(state, tenant)
    redis.call('ZADD', tkey, num(score), id)
  end
end

-- The reverse of index. `tenant` false/'' = none, nil = read it from the job.
local function unindex(id, state, tenant)
  redis.call('ZREM', BY_STATE[state], id)
  if tenant == nil then tenant = redis.call('HGET', K_JOB .. id, 'tenant') end
  if tenant and tenant ~= '' then
    local tkey = tstate_key(state, tenant)
    redis.call('ZREM', tkey, id)
  end
end

-- A job's pending score (its place in line, see keys.py): `place` is lifecycle's Place.
-- 'back' after every job of its priority, 'front' before them (release on shutdown),
-- 'keep' the score it had when it was last pushed (`kept`: stored in its hash as
-- `score`; a job stored before scores were kept goes to the back).
-- `seq`: for 'back', a number the caller already took from K_SEQ (a batch takes its
-- numbers with one INCRBY); nil = take one here.
local function pending_score(priority, place, kept, seq)
  if place == 'keep' and kept then
    return kept
  end
  local base = (MAX_PRIORITY - priority) * PRIORITY_BAND + PRIORITY_MID
  if place == 'front' then
    return base - redis.call('INCR', K_FRONT)
  end
  return base + (seq or redis.call('INCR', K_SEQ))
end

-- The bucket of jobs without a tenant is two structures. Most of its jobs are at priority
-- 0 and were queued at the back: in that order they are simply FIFO, so they go to a list,
-- K_FIFO (~30 B of Redis memory a job, where a sorted-set entry costs ~120 B). The rest
-- (other priorities, jobs released to the front, a recovered job keeping its place) stay
-- in the K_PENDING zset. A fifo job is two entries: its seq (an integer, a few bytes in
-- the list), then its id less "<queue>:" (a job's id starts with its queue's name:
-- stored once in the key; ':' .. id for any other id, as the rest of a queue's id never
-- holds ':'). Its score would be FIFO_BASE + seq, and as seqs are taken from K_SEQ when
-- a job is pushed, the list is in score order. The claim takes whichever head has the
-- lower score (pop_untenanted), so the order is exactly the zset's alone. A queue stored
-- before the fifo existed has its jobs in the zset only, read the same way.
local FIFO_BASE = MAX_PRIORITY * PRIORITY_BAND + PRIORITY_MID
-- Never an entry (an id entry starting with ':' has an id after it): what fifo_remove
-- overwrites a job's two entries with before it removes them.
local FIFO_GONE = ':'

local function fifo_id_entry(id)
  if string.sub(id, 1, #QUEUE + 1) == QUEUE .. ':' then
    return string.sub(id, #QUEUE + 2)
  end
  return ':' .. id
end

local function fifo_id(entry)
  if string.sub(entry, 1, 1) == ':' then return string.sub(entry, 2) end
  return QUEUE .. ':' .. entry
end

-- Append the fifo pairs of `entries` (a flat LRANGE/LPOP reply) to `out` as id, score.
local function fifo_pairs(entries, out)
  for i = 1, #entries, 2 do
    out[#out + 1] = fifo_id(entries[i + 1])
    out[#out + 1] = num(FIFO_BASE + tonumber(entries[i]))
  end
  return out
end

-- How many jobs bucket `tenant` holds ('' = the jobs without a tenant).
local function bucket_len(tenant)
  if tenant == '' then
    return redis.call('ZCARD', K_PENDING) + redis.call('LLEN', K_FIFO) / 2
  end
  return redis.call('ZCARD', K_TBUCKET .. tenant)
end

-- Whether no job without a tenant is pending: one command for both structures (Redis
-- deletes an emptied list or zset, so neither key exists then).
local function untenanted_empty()
  return redis.call('EXISTS', K_PENDING, K_FIFO) == 0
end

-- Take the first `count` pending jobs without a tenant out of line. Returns a flat array
-- like ZPOPMIN's: id, score (a string), ...
local function pop_untenanted(count)
  if redis.call('ZCARD', K_PENDING) == 0 then -- the common case: the fifo alone
    return fifo_pairs(redis.call('LPOP', K_FIFO, count * 2) or {}, {})
  end
  local z = redis.call('ZRANGE', K_PENDING, 0, count - 1, 'WITHSCORES')
  local f = fifo_pairs(redis.call('LRANGE', K_FIFO, 0, count * 2 - 1), {})
  local out = {}
  local zi, fi = 1, 1
  while #out < count * 2 and (zi <= #z or fi <= #f) do
    local a, b = z, zi
    if fi <= #f and (zi > #z or tonumber(f[fi + 1]) < tonumber(z[zi + 1])) then
      a, b, fi = f, fi, fi + 2
    else
      zi = zi + 2
    end
    out[#out + 1] = a[b]
    out[#out + 1] = a[b + 1]
  end
  if zi > 1 then redis.call('ZPOPMIN', K_PENDING, (zi - 1) / 2) end
  if fi > 1 then redis.call('LPOP', K_FIFO, fi - 1) end
  return out
end

-- Take job `id` out of the fifo: LPOS finds its id entry (the first at an odd index: a
-- seq entry may look the same), both entries are overwritten with FIFO_GONE and LREM
-- drops them: each a scan in Redis's C as far as the job, O(its place), as BullMQ's
-- LREM. `from_tail`: a job pushed back to pending (retried, promoted) is near the tail.
local function fifo_remove(id, from_tail)
  local entry, step = fifo_id_entry(id), 1
  if from_tail then step = -1 end
  local rank = step
  while true do
    local pos = redis.call('LPOS', K_FIFO, entry, 'RANK', rank)
    if not pos then return end
    if pos % 2 == 1 then
      redis.call('LSET', K_FIFO, pos, FIFO_GONE)
      redis.call('LSET', K_FIFO, pos - 1, FIFO_GONE)
      redis.call('LREM', K_FIFO, 2 * step, FIFO_GONE)
      return
    end
    rank = rank + step
  end
end

-- Index a job as pending under `score`: a job without a tenant goes to K_PENDING (or,
-- `fifo`: queued at the back at priority 0, K_FIFO), a tenant job to its tenant's bucket
-- (and K_TPENDING, the index of all tenant jobs).
-- `was_empty`: whether the bucket was empty before, if the caller knows (nil: look).
local function index_pending(id, score, tenant, was_empty, fifo)
  -- Idle workers sleep after a claim found nothing claimable, so a bucket that goes
  -- from empty to non-empty is the moment that needs a wake-up (a new tenant's jobs
  -- may be claimable while every other tenant is held back by its limit). It also joins
  -- the rotation then, where it stood when it left (the turn it was last served at, 0
  -- if never): a tenant that empties its bucket and refills it at once does not jump
  -- ahead of the tenants served less recently.
  if tenant == '' then
    if fifo then
      local len = redis.call('RPUSH', K_FIFO, num(score - FIFO_BASE), fifo_id_entry(id))
      if was_empty == nil then
        was_empty = len == 2 and redis.call('ZCARD', K_PENDING) == 0
      end
    else
      redis.call('ZADD', K_PENDING, num(score), id)
      if was_empty == nil then
        was_empty = redis.call('ZCARD', K_PENDING) == 1 and redis.call('LLEN', K_FIFO) == 0
      end
    end
    if was_empty then
      redis.call('ZADD', K_READY, 'NX', redis.call('HGET', K_SERVED, '') or 0, '')
      wake_needed = true
    end
  else
    redis.call('ZADD', K_TPENDING, num(score), id)
    local bucket = K_TBUCKET .. tenant
    redis.call('ZADD', bucket, num(score), id)
    if redis.call('ZCARD', bucket) == 1 then
      redis.call('ZADD', K_READY, 'NX', redis.call('HGET', K_SERVED, tenant) or 0, tenant)
      wake_needed = true
    end
  end
end

-- An existing job goes back to pending at `place` (see pending_score).
local function push_pending(id, jk, place)
  local f = redis.call('HMGET', jk, 'priority', 'tenant', 'score')
  local priority, kept = tonumber(f[1]) or 0, tonumber(f[3])
  local score = pending_score(priority, place, kept)
  redis.call('HSET', jk, 'state', 'pending', 'score', num(score))
  redis.call('HDEL', jk, 'scheduled_ms')
  -- The fifo takes the jobs queued at the back at priority 0 (a kept place may lie
  -- before fifo entries: the zset holds it).
  local back = place == 'back' or (place == 'keep' and not kept)
  index_pending(id, score, f[2] or '', nil, back and priority == 0)
end

-- A bucket found empty leaves the rotation; the turn it was last served at is kept, for
-- when it refills (see index_pending).
local function leave_rotation(tenant)
  local turn = redis.call('ZSCORE', K_READY, tenant)
  redis.call('ZREM', K_READY, tenant)
  if turn and turn ~= '0' then
    redis.call('HSET', K_SERVED, tenant, turn)
  end
end

-- Take a pending job out of its bucket (cancel, purge).
local function remove_pending(id, jk)
  local f = redis.call('HMGET', jk, 'tenant', 'score')
  local tenant = f[1]
  if tenant and tenant ~= '' then
    redis.call('ZREM', K_TPENDING, id)
    local bucket = K_TBUCKET .. tenant
    redis.call('ZREM', bucket, id)
  elseif redis.call('ZREM', K_PENDING, id) == 0 then
    -- A job with a score was pushed back (retried, promoted: near the tail). One stored
    -- pending by enqueue was pushed when it was created: nearer the tail if that is
    -- closer to now than to when the fifo's head job was.
    local from_tail = f[2] ~= false
    local head = redis.call('LINDEX', K_FIFO, 1)
    if not from_tail and head then
      local c = tonumber(redis.call('HGET', jk, 'created_ms'))
      local head_id = fifo_id(head)
      local h = tonumber(redis.call('HGET', K_JOB .. head_id, 'created_ms'))
      from_tail = h ~= nil and c ~= nil and NOW - c < c - h
    end
    fifo_remove(id, from_tail)
  end
end

-- The queue's limits (nil = none); `slotted` when a concurrency limit exists, so a job
-- that stops running frees a slot that idle workers must hear about; `any` when any
-- limit exists.
local function read_limits()
  local f = redis.call('HMGET', K_LIMITS, 'concurrency', 'tenant_concurrency', 'rate',
    'rate_window_ms', 'tenant_rate', 'tenant_rate_window_ms')
  local lim = {
    concurrency = tonumber(f[1]), tenant_concurrency = tonumber(f[2]),
    rate = tonumber(f[3]), rate_window_ms = tonumber(f[4]) or 1000,
    tenant_rate = tonumber(f[5]), tenant_rate_window_ms = tonumber(f[6]) or 1000,
  }
  lim.slotted = lim.concurrency ~= nil or lim.tenant_concurrency ~= nil
  lim.any = lim.slotted or lim.rate ~= nil or lim.tenant_rate ~= nil
  return lim
end

-- A running job (its `running` zset entry already removed) stops running: one fewer
-- for its tenant, and a wake-up when a concurrency limit may have held others back.
local function left_running(tenant, lim)
  if tenant and tenant ~= '' and redis.call('HINCRBY', K_TRUNNING, tenant, -1) <= 0 then
    redis.call('HDEL', K_TRUNNING, tenant)
  end
  if (lim or read_limits()).slotted then
    wake_needed = true
  end
end

-- Publish a wake-up if this script made work claimable (and the queue is not paused).
-- With `lim`, not when the queue is back at its concurrency limit: the script's own
-- claim took the slot a finished job freed, and waking the others would only make them
-- ask for nothing.
local function wake(lim)
  if wake_needed and redis.call('EXISTS', K_PAUSED) == 0
      and (not untenanted_empty() or redis.call('ZCARD', K_TPENDING) > 0)
      and not (lim and lim.concurrency
               and redis.call('ZCARD', K_RUNNING) >= lim.concurrency) then
    redis.call('PUBLISH', WAKE_CHANNEL, QUEUE)
  end
end

local function schedule(id, jk, due, tenant)
  if tenant == nil then tenant = redis.call('HGET', jk, 'tenant') end
  index(id, 'scheduled', due, tenant)
  redis.call('HSET', jk, 'state', 'scheduled', 'scheduled_ms', num(due))
end

-- The events of this call held back to go into one stream entry (see flush_events), or
-- nil: each emit writes its own entry. A script that emits one event per job of a batch
-- (exchange) holds them: one XADD per call instead of two per processed job.
local held_events = nil

local function xadd_event(kind, id, task, tenant, attempt, data)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'kind', kind, 'job', id, 'task', task, 'tenant', tenant, 'attempt', attempt,
    'at', num(NOW), 'data', data)
end

-- `task`, `tenant` and `attempt` are read from the job unless the caller already has them
-- (the hot paths do: one HMGET fewer per event).
local function emit(id, jk, kind, data, task, tenant, attempt)
  if EVENTS_MAXLEN == UNSTREAMED_MAXLEN then return end -- events=False: lifecycle rule 7
  if task == nil then
    local f = redis.call('HMGET', jk, 'task', 'tenant', 'attempt')
    task, tenant, attempt = f[1], f[2], f[3]
  end
  local event = { kind, id, task or '', tenant or '', tostring(attempt or '0'), data or '{}' }
  if held_events then
    held_events[#held_events + 1] = event
  else
    xadd_event(unpack(event))
  end
end

-- At most this many events share one stream entry (see flush_events).
local EVENTS_PER_ENTRY = 64

-- Write the events held back by this call (see held_events): one event as its own entry,
-- several as entries of two fields, `at` (the time of all of them: one script) and
-- `batch`, a JSON array of [kind, job, task, tenant, attempt, data] (data: the event's
-- JSON object itself), in the order they happened. engines/redis/reads.py expands them
-- and numbers the events inside an entry, so each keeps an id to resume after.
-- The stream's bound counts entries, so an entry of b events trims the stream to
-- EVENTS_MAXLEN / b entries: about EVENTS_MAXLEN events stay whatever the batch sizes
-- (at most EVENTS_MAXLEN * (1 + ln EVENTS_PER_ENTRY), when batch sizes vary widely: of
-- the entries of s events or more, only EVENTS_MAXLEN / s outlive the newest of them).
local function flush_events()
  local held = held_events
  held_events = nil
  if held == nil or #held == 0 then return end
  if #held == 1 then
    xadd_event(unpack(held[1]))
    return
  end
  for first = 1, #held, EVENTS_PER_ENTRY do
    local last = math.min(#held, first + EVENTS_PER_ENTRY - 1)
    local parts = {}
    for i = first, last do
      local e = held[i]
      -- data is JSON text already: spliced in as it is, not encoded again as a string.
      parts[#parts + 1] = string.sub(cjson.encode({ e[1], e[2], e[3], e[4], e[5] }), 1, -2)
        .. ',' .. e[6] .. ']'
    end
    local maxlen = math.ceil(tonumber(EVENTS_MAXLEN) / #parts)
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', maxlen, '*',
      'at', num(NOW), 'batch', '[' .. table.concat(parts, ',') .. ']')
  end
end

-- A dedupe key belongs to a job only while it is live (scheduled, pending or running).
-- `key`: the job's dedupe key if the caller read it (false = none), nil = read it here.
local function release_dedupe(id, jk, key)
  if key == nil then key = redis.call('HGET', jk, 'dedupe_key') end
  if key and key ~= '' and redis.call('HGET', K_DEDUPE, key) == id then
    redis.call('HDEL', K_DEDUPE, key)
  end
end

-- Move a job (already removed from its live zset) to a finished state; `result` (or
-- nil) is stored in the same write; `dedupe_key` as for release_dedupe; `tenant` as
-- for unindex; `links` as for settled.
local function finish(id, jk, state, result, dedupe_key, tenant, links)
  -- The token is blanked in the same write ('' reads as none), not HDELed: one command
  -- fewer per finished job (the hot path counts them).
  if result then
    redis.call('HSET', jk, 'state', state, 'finished_ms', num(NOW), 'token', '', 'result', result)
  else
    redis.call('HSET', jk, 'state', state, 'finished_ms', num(NOW), 'token', '')
  end
  if tenant == nil then tenant = redis.call('HGET', jk, 'tenant') end
  index(id, state, NOW, tenant)
  release_dedupe(id, jk, dedupe_key)
  settled(id, jk, state, links)
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

-- Apply transition `t` (an entry of TRANSITIONS) to a running job whose `running` entry
-- the caller already removed. The table decides; this only carries out its flags, the
-- same for every outcome and for an expired lease.
--   body: what the outcome carries: its result when `t.store_result`, its error (an
--         AttemptError as JSON) when `t.append_error`, otherwise a reason for the event
--         log ('' = none).
--   delay: ms; with `t.later_state`, a delay > 0 sends the job there until due.
--   tenant, task, attempt, dedupe_key: the job's fields as the caller read them.
--   data: the event's data, or nil to derive it from the flags.
--   links: the job's flow fields as the caller read them (see settled; nil = read them).
local function apply(id, jk, t, body, delay, tenant, task, attempt, dedupe_key, lim, data,
    links)
  left_running(tenant, lim)
  if t.append_error then
    add_error(jk, body)
  end
  if t.give_back_attempt then
    attempt = redis.call('HINCRBY', jk, 'attempt', -1)
    if attempt < 0 then
      attempt = 0
      redis.call('HSET', jk, 'attempt', 0)
    end
  end
  if t.clear_started then
    redis.call('HDEL', jk, 'token', 'started_ms')
  elseif not t.finishes then -- finish() drops the token in the same breath
    redis.call('HDEL', jk, 'token')
  end
  if t.finishes then
    local result = nil
    -- A result of None ('null') is not stored: an absent result reads as None.
    if t.store_result and body ~= '' and body ~= 'null' then result = body end
    finish(id, jk, t.state, result, dedupe_key, tenant or false, links)
  elseif delay > 0 and t.later_state == 'scheduled' then
    schedule(id, jk, NOW + delay, tenant or false)
  else
    push_pending(id, jk, t.place)
  end
  if data == nil then
    local d, any = {}, false
    if t.append_error then
      d.error, any = error_message(body), true
    elseif not t.store_result and body ~= '' then
      d.reason, any = body, true
    end
    if t.later_state then
      d.delay_ms, any = delay, true
    end
    if any then data = cjson.encode(d) end
  end
  emit(id, jk, t.event, data, task, tenant, attempt)
end

-- Scheduled jobs whose due time has come become pending, at the back of their priority,
-- earliest due first (bounded per call). Jobs due in the same millisecond go in the order
-- they were queued (the pending score they were last given; see enqueue), as on SQLite,
-- not in the order of their ids.
local function promote_due(limit)
  local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', num(NOW), 'WITHSCORES',
    'LIMIT', 0, limit)
  local jobs = {}
  for i = 1, #due, 2 do
    local id = due[i]
    local f = redis.call('HMGET', K_JOB .. id, 'state', 'score', 'tenant')
    unindex(id, 'scheduled', f[3] or false)
    if f[1] == 'scheduled' then
      jobs[#jobs + 1] = { id, tonumber(due[i + 1]), tonumber(f[2]) or 0 }
    end
  end
  table.sort(jobs, function(x, y)
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[3] < y[3]
  end)
  for _, job in ipairs(jobs) do
    local jk = K_JOB .. job[1]
    push_pending(job[1], jk, 'back')
  end
  return #jobs
end

-- Running jobs whose lease deadline has come (deadline <= now): `expire` while attempts
-- are left (back to pending, keeping its place), `expire_last` when the lost attempt was
-- the last one (failed: this is what ends crash loops). Bounded per call.
local function recover_expired(limit, lim)
  local ids = redis.call('ZRANGEBYSCORE', K_RUNNING, '-inf', num(NOW), 'LIMIT', 0, limit)
  local recovered = 0
  for _, id in ipairs(ids) do
    local jk = K_JOB .. id
    local f = redis.call('HMGET', jk, 'state', 'attempt', 'max_attempts', 'tenant', 'task',
      'dedupe_key', 'parent', 'policy', 'children')
    unindex(id, 'running', f[4] or false)
    if f[1] == 'running' then
      recovered = recovered + 1
      lim = lim or read_limits()
      local attempt = tonumber(f[2]) or 0
      if attempt >= (tonumber(f[3]) or DEFAULT_MAX_ATTEMPTS) then
        local err = cjson.encode({
          attempt = attempt, type = 'LeaseExpired', message = lease_expired_message(attempt),
          at = NOW / 1000,
        })
        apply(id, jk, TRANSITIONS.expire_last, err, 0, f[4], f[5], f[2], f[6], lim,
          LEASE_EXPIRED_EVENT, { f[7], f[8], f[9] })
      else
        apply(id, jk, TRANSITIONS.expire, '', 0, f[4], f[5], f[2], f[6], lim)
      end
    end
  end
  return recovered
end

-- Operator retry of a failed/cancelled job: a fresh attempt budget, errors kept, at the
-- back of the line. Refused when its dedupe key is held by another live job (two live
-- jobs never share a key): returns the holder and the key then, nil when retried.
local function retry_finished(id, jk, state)
  local key = redis.call('HGET', jk, 'dedupe_key')
  if key and key ~= '' then
    local holder = redis.call('HGET', K_DEDUPE, key)
    if holder and holder ~= id and LIVE[redis.call('HGET', K_JOB .. holder, 'state')] then
      return holder, key
    end
    redis.call('HSET', K_DEDUPE, key, id)
  end
  unindex(id, state, nil)
  redis.call('HSET', jk, 'attempt', 0)
  redis.call('HDEL', jk, 'finished_ms', 'result', 'token')
  push_pending(id, jk, 'back')
  emit(id, jk, 'enqueued', cjson.encode({ retried_by = 'operator' }))
  rearm_parent(id, jk)
  return nil
end

-- The outcome of an admin operation on one job: its fields, or why not.
local function job_reply(jk)
  return { 'ok', redis.call('HGETALL', jk) }
end
