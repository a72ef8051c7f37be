-- KEYS[1] presence hash, KEYS[2] expiry zset; ARGV[1] now (ms)
-- Drops expired clients, returns HGETALL of the rest.
local expired = redis.call("zrangebyscore", KEYS[2], "-inf", ARGV[1])
if #expired > 0 then
  redis.call("hdel", KEYS[1], unpack(expired))
  redis.call("zremrangebyscore", KEYS[2], "-inf", ARGV[1])
end
return redis.call("hgetall", KEYS[1])
