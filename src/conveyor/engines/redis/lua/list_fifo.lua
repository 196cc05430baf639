-- list_fifo: a page of the fifo (pending jobs without a tenant at priority 0, queued at
-- the back; see _lib.lua) after a pending score, for the pending listing (read only).
--
-- KEYS:    the per-queue keys (see _lib.lua); ARGV[1..4]: the header (see _lib.lua)
-- ARGV[5]: the score to list after ('' = from the head)   ARGV[6]: at most this many
-- Returns: flat array: id, score, ... in claim order.
-- Touches: reads the fifo.
--
-- The fifo is in score order, so the first job after the score is found by bisection:
-- ~log2(length) LINDEX of a seq entry (each walks the list's nodes, not its entries),
-- never a scan. Index i of the bisection is job i: entries 2i (seq) and 2i + 1 (id).
local after, count = ARGV[5], tonumber(ARGV[6])
local lo = 0
if after ~= '' then
  local a = tonumber(after)
  local hi = redis.call('LLEN', K_FIFO) / 2
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if FIFO_BASE + tonumber(redis.call('LINDEX', K_FIFO, mid * 2)) > a then
      hi = mid
    else
      lo = mid + 1
    end
  end
end
return fifo_pairs(redis.call('LRANGE', K_FIFO, lo * 2, (lo + count) * 2 - 1), {})
