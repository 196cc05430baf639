-- enqueue_flow: store a whole flow (lifecycle rule 6) in one script call: its root
-- first, every parent before its children, all in this queue.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: n, the number of jobs; then 14 values per job:
--          id, task, payload json, max_attempts, priority, tenant, dedupe_key,
--          timeout_ms, backoff json, delay_ms, run_at_ms, parent id, policy,
--          waits (1: it has children)  ('' = none; validated by the app)
-- Returns: { root id, created (1/0), root state }. A root whose id exists, or whose
--          dedupe key a live job holds, answers with that job and nothing is written.
-- Touches: job hashes and their :wait sets, waiting, pending (tenant jobs: tpending,
--          their bucket, ready; reads served) or scheduled, the tenant state indexes,
--          dedupe, seq, events; PUBLISH on the wake channel when a bucket was empty.
local W = 14
local n = tonumber(ARGV[5])
local root, root_key = ARGV[6], ARGV[12]
local held = redis.call('HGET', K_JOB .. root, 'state')
if held then return { root, 0, held } end
if root_key ~= '' then
  local other = redis.call('HGET', K_DEDUPE, root_key)
  if other then
    local st = redis.call('HGET', K_JOB .. other, 'state')
    if LIVE[st] then return { other, 0, st } end
  end
end

local kids = {} -- parent id -> its children's ids, in order
local order = {}
local root_state = 'pending'
for i = 0, n - 1 do
  local b = 6 + i * W
  local id, tenant, dedupe_key = ARGV[b], ARGV[b + 5], ARGV[b + 6]
  local parent, waits = ARGV[b + 11], ARGV[b + 13] == '1'
  local jk = K_JOB .. id
  local priority = tonumber(ARGV[b + 4])
  local due = NOW + tonumber(ARGV[b + 9])
  if ARGV[b + 10] ~= '' then due = tonumber(ARGV[b + 10]) end
  local state = 'pending'
  if waits then
    state = WAITING
  elseif due > NOW then
    state = 'scheduled'
  end
  if i == 0 then root_state = state end
  local score = pending_score(priority, 'back')
  local fields = new_job_fields(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], priority, state, score)
  opt_field(fields, 'tenant', tenant)
  opt_field(fields, 'dedupe_key', dedupe_key)
  opt_field(fields, 'timeout_ms', ARGV[b + 7])
  opt_field(fields, 'backoff', ARGV[b + 8])
  opt_field(fields, 'parent', parent)
  if parent ~= '' then opt_field(fields, 'policy', ARGV[b + 12]) end
  if state == 'scheduled' then opt_field(fields, 'scheduled_ms', num(due)) end
  redis.call('HSET', jk, unpack(fields))
  if dedupe_key ~= '' then redis.call('HSET', K_DEDUPE, dedupe_key, id) end
  if state == WAITING then
    index(id, WAITING, NOW, tenant)
    kids[id] = {}
    order[#order + 1] = id
  elseif state == 'scheduled' then
    index(id, 'scheduled', due, tenant)
  else
    index_pending(id, score, tenant, nil, priority == 0)
  end
  if parent ~= '' then
    local list = kids[parent]
    list[#list + 1] = id
    local wkey = wait_key(parent)
    redis.call('SADD', wkey, id)
  end
  emit(id, jk, 'enqueued', nil, ARGV[b + 1], tenant, '0')
end
for _, id in ipairs(order) do
  redis.call('HSET', K_JOB .. id, 'children', cjson.encode(kids[id]))
end
wake()
return { root, 1, root_state }
