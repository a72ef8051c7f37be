-- Append a publication to a channel's history stream and publish it, atomically.
-- KEYS[1] stream, KEYS[2] meta hash
-- ARGV[1] pub/sub channel, ARGV[2] data (JSON), ARGV[3] info JSON or "", ARGV[4] tags JSON or "",
-- ARGV[5] history size, ARGV[6] history ttl (ms), ARGV[7] meta ttl (ms),
-- ARGV[8] epoch to use when the stream is new, ARGV[9] now (ms), ARGV[10] "1" for SPUBLISH
-- Returns {offset, epoch}.
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[8]
  redis.call("hset", KEYS[2], "e", epoch)
end
local offset = redis.call("hincrby", KEYS[2], "s", 1)
redis.call("pexpire", KEYS[2], ARGV[7])
local fields = {"d", ARGV[2], "t", ARGV[9]}
if ARGV[3] ~= "" then table.insert(fields, "i"); table.insert(fields, ARGV[3]) end
if ARGV[4] ~= "" then table.insert(fields, "g"); table.insert(fields, ARGV[4]) end
redis.call("xadd", KEYS[1], "MAXLEN", ARGV[5], offset .. "-1", unpack(fields))
redis.call("pexpire", KEYS[1], ARGV[6])
local header = '{"o":' .. offset .. ',"e":"' .. epoch .. '"'
if ARGV[3] ~= "" then header = header .. ',"i":' .. ARGV[3] end
if ARGV[4] ~= "" then header = header .. ',"t":' .. ARGV[4] end
local message = "~p" .. header .. "}\n" .. ARGV[2]
if ARGV[10] == "1" then
  redis.call("spublish", ARGV[1], message)
else
  redis.call("publish", ARGV[1], message)
end
return {offset, epoch}
