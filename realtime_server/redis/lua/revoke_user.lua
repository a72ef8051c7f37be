-- Keep the latest "issued before" cutoff of a user.
-- KEYS[1] user key; ARGV[1] cutoff (unix seconds, float), ARGV[2] ttl (seconds)
-- Returns the cutoff in force.
local current = tonumber(redis.call("get", KEYS[1]) or "0")
local cutoff = tonumber(ARGV[1])
if cutoff < current then cutoff = current end
redis.call("set", KEYS[1], tostring(cutoff), "EX", ARGV[2])
return tostring(cutoff)
