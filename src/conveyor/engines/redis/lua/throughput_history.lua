-- throughput_history: completed and failed jobs per minute over a recent window (read only).
--
-- KEYS:    [1] the queue's completed zset, [2] its failed zset (score = finished ms; both
--          carry the queue's hash tag, so the script is legal on Redis Cluster)
-- ARGV:    [1] minutes in the window (>= 1)
--          [2] now in ms from a test clock, or '' (Redis TIME; see _clock.lua)
-- Returns: { now_ms, completed per minute (oldest first)..., failed per minute... }
--          Minute i counts scores in (now - (minutes - i) * 60000, now - (minutes-1-i) *
--          60000]; the newest minute is open-ended, so a finish stamped by a client whose
--          clock runs ahead still counts as "now".
-- Touches: ZCOUNT on the two zsets only: O(minutes * log n), however many jobs they hold.
local now = clock_ms(ARGV[2])
local minutes = tonumber(ARGV[1])
local out = { now }
for k = 1, 2 do
  for i = 0, minutes - 1 do
    local lo = now - (minutes - i) * 60000
    local hi = now - (minutes - 1 - i) * 60000
    local upper = string.format('%.0f', hi)
    if i == minutes - 1 then upper = '+inf' end
    out[#out + 1] = redis.call('ZCOUNT', KEYS[k], '(' .. string.format('%.0f', lo), upper)
  end
end
return out
