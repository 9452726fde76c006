-- Take a read lock on this node: granted while no writer holds the lock and no waiting
-- writer's intent stands; readers share it. Each reader is a member of the readers' sorted
-- set scored by its expiry (server time, ms), since Redis 7.0 has no per-field TTL; expired
-- members are pruned first, and the set's own expiry is kept at the latest reader's.
-- KEYS[1]: writer key; KEYS[2]: readers' set; KEYS[3]: a waiting writer's intent.
-- ARGV[1]: this attempt's value; ARGV[2]: lease in ms; ARGV[3]: at most this many readers on
-- this node ("0": no limit; only the naive counting semaphore, which is unsafe, sets one).
-- Returns {1, 0} granted, {0, pttl} refused (pttl: how long what stands in the way lasts).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local w = redis.call('PTTL', KEYS[1])
if w ~= -2 then
  return {0, w}
end
local intent = redis.call('PTTL', KEYS[3])
if intent ~= -2 then
  return {0, intent}
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[2]) >= limit then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], tonumber(last[2]))
return {1, 0}
