-- _clock.lua: `clock_ms`, prepended to every script that reads the time.
--
-- Redis TIME is the one clock for due times, lease deadlines and worker records,
-- whatever the clients' clocks say. A test engine built with a fake clock
-- (`RedisEngine(url, clock=FakeClock())`) passes that clock's now in ARGV instead, so a
-- test drives lease expiry and due times the same way on every engine; production
-- passes '' and TIME decides.
local function clock_ms(given)
  if given and given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
