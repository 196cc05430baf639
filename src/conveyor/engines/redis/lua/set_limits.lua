-- set_limits: store (or clear) the queue's limits and wake idle workers.
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5..10]: concurrency, tenant_concurrency, rate, rate_window_ms, tenant_rate,
--          tenant_rate_window_ms ('' = no limit; all '' clears the limits)
-- Returns: 1
-- Touches: limits; PUBLISH on the wake channel when jobs are pending (a raised or removed
--          limit may make them claimable for workers that went idle under the old one).
local names = { 'concurrency', 'tenant_concurrency', 'rate', 'rate_window_ms', 'tenant_rate',
                'tenant_rate_window_ms' }
redis.call('DEL', K_LIMITS)
local limited = false
for i, name in ipairs(names) do
  local value = ARGV[4 + i]
  if value ~= '' then
    redis.call('HSET', K_LIMITS, name, value)
    if name ~= 'rate_window_ms' and name ~= 'tenant_rate_window_ms' then limited = true end
  end
end
if not limited then
  redis.call('DEL', K_LIMITS)
end
wake_needed = true
wake()
return 1
