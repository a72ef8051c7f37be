-- Read a channel's stream top and, optionally, publications.
-- KEYS[1] stream, KEYS[2] meta hash
-- ARGV[1] epoch to use when the stream is new, ARGV[2] meta ttl (ms, 0: do not create),
-- ARGV[3] since offset (-1: none), ARGV[4] limit (0: top only, -1: all), ARGV[5] "1" reverse,
-- ARGV[6] oldest entry time kept (ms)
-- Returns {top offset, epoch, entries} (XRANGE replies); epoch "" when there is no stream
-- and ARGV[2] said not to create one.
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  if tonumber(ARGV[2]) <= 0 then
    return {0, "", {}}
  end
  epoch = ARGV[1]
  redis.call("hset", KEYS[2], "e", epoch, "s", 0)
  redis.call("pexpire", KEYS[2], ARGV[2])
end
local top = tonumber(redis.call("hget", KEYS[2], "s") or "0")
local limit = tonumber(ARGV[4])
if limit == 0 then
  return {top, epoch, {}}
end
local since = tonumber(ARGV[3])
local entries
if ARGV[5] == "1" then
  local upper = "+"
  if since >= 0 then upper = "(" .. since .. "-1" end
  if limit > 0 then
    entries = redis.call("xrevrange", KEYS[1], upper, "-", "COUNT", limit)
  else
    entries = redis.call("xrevrange", KEYS[1], upper, "-")
  end
else
  local lower = "-"
  if since >= 0 then lower = "(" .. since .. "-1" end
  if limit > 0 then
    entries = redis.call("xrange", KEYS[1], lower, "+", "COUNT", limit)
  else
    entries = redis.call("xrange", KEYS[1], lower, "+")
  end
end
local oldest = tonumber(ARGV[6])
local kept = {}
for _, entry in ipairs(entries) do
  local f = entry[2]
  local t = 0
  for i = 1, #f, 2 do if f[i] == "t" then t = tonumber(f[i + 1]) end end
  if t >= oldest then table.insert(kept, entry) end
end
return {top, epoch, kept}
