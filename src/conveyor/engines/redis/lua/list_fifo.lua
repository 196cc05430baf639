-- list_fifo: a page of the fifo (pending jobs without a tenant at priority 0, queued at
-- the back; see _lib.lua) after a pending score, for the pending listing (read only).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: the score to list after ('' = from the head)   ARGV[6]: at most this many
-- Returns: flat array: id, score, ... in claim order.
-- Touches: reads the fifo.
--
-- The fifo is in score order, so the first entry after the score is found by bisection:
-- ~log2(length) LINDEX (each walks the list's nodes, not its entries), never a scan.
local after, count = ARGV[5], tonumber(ARGV[6])
local lo = 0
if after ~= '' then
  local a = tonumber(after)
  local hi = redis.call('LLEN', K_FIFO)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local _, score = fifo_parse(redis.call('LINDEX', K_FIFO, mid))
    if score > a then hi = mid else lo = mid + 1 end
  end
end
local out = {}
for _, e in ipairs(redis.call('LRANGE', K_FIFO, lo, lo + count - 1)) do
  local id, score = fifo_parse(e)
  out[#out + 1] = id
  out[#out + 1] = num(score)
end
return out
