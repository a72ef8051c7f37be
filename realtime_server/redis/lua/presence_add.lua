-- KEYS[1] presence hash, KEYS[2] expiry zset; ARGV[1] client, ARGV[2] info JSON,
-- ARGV[3] expire at (ms), ARGV[4] key ttl (ms)
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
redis.call("zadd", KEYS[2], ARGV[3], ARGV[1])
redis.call("pexpire", KEYS[1], ARGV[4])
redis.call("pexpire", KEYS[2], ARGV[4])
return 1
