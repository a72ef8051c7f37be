-- Read the stream top and, optionally, publications of one or more channels.
-- Per channel i (from 0): KEYS[2i+1] stream, KEYS[2i+2] meta hash, and from ARGV[6i+1]:
-- epoch to use when the stream is new, meta ttl (ms, 0: do not create), since offset
-- (-1: none), limit (0: top only, -1: all), "1" reverse, oldest entry time kept (ms).
-- Returns per channel {top offset, epoch, entries} (XRANGE replies); epoch "" when there
-- is no stream and the meta ttl said not to create one.
-- Several channels only on a single Redis: on a cluster each call reads one channel
-- (its keys share the channel's hash slot).
local function read(stream, meta, a)
  local epoch = redis.call("hget", meta, "e")
  if not epoch then
    if tonumber(ARGV[a + 2]) <= 0 then
      return {0, "", {}}
    end
    epoch = ARGV[a + 1]
    redis.call("hset", meta, "e", epoch, "s", 0)
    redis.call("pexpire", meta, ARGV[a + 2])
  end
  local top = tonumber(redis.call("hget", meta, "s") or "0")
  local limit = tonumber(ARGV[a + 4])
  if limit == 0 then
    return {top, epoch, {}}
  end
  local since = tonumber(ARGV[a + 3])
  local entries
  if ARGV[a + 5] == "1" then
    local upper = "+"
    if since >= 0 then upper = "(" .. since .. "-1" end
    if limit > 0 then
      entries = redis.call("xrevrange", stream, upper, "-", "COUNT", limit)
    else
      entries = redis.call("xrevrange", stream, upper, "-")
    end
  else
    local lower = "-"
    if since >= 0 then lower = "(" .. since .. "-1" end
    if limit > 0 then
      entries = redis.call("xrange", stream, lower, "+", "COUNT", limit)
    else
      entries = redis.call("xrange", stream, lower, "+")
    end
  end
  local oldest = tonumber(ARGV[a + 6])
  local kept = {}
  for _, entry in ipairs(entries) do
    local f = entry[2]
    local t = 0
    for i = 1, #f, 2 do if f[i] == "t" then t = tonumber(f[i + 1]) end end
    if t >= oldest then table.insert(kept, entry) end
  end
  return {top, epoch, kept}
end

local out = {}
for i = 0, #KEYS / 2 - 1 do
  out[i + 1] = read(KEYS[2 * i + 1], KEYS[2 * i + 2], 6 * i)
end
return out
