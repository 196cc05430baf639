-- set_progress: store a running job's progress, fenced by its lease token.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: job id   ARGV[6]: token   ARGV[7]: progress json
-- Returns: 1 when stored, 0 when the lease is gone.
-- Touches: the job hash, events.
local id = ARGV[5]
local jk = K_JOB .. id
local f = redis.call('HMGET', jk, 'state', 'token')
if f[1] ~= 'running' or f[2] ~= ARGV[6] then
  return 0
end
redis.call('HSET', jk, 'progress', ARGV[7])
-- The progress value is already JSON: splice it in rather than decode and re-encode.
emit(id, jk, 'progress', '{"progress":' .. ARGV[7] .. '}')
return 1
