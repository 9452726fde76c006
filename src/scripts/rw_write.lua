-- Take the write lock on this node: granted only while no writer holds it and no live reader
-- is in the readers' set (expired members are pruned first, by server time). Refused because
-- of readers, it leaves this writer's intent (unless another writer's stands): new readers are
-- refused while it lasts, so a stream of readers cannot starve a waiting writer, and its short
-- expiry (refreshed at each retry) means a writer that vanished blocks nobody for long.
-- Granted, it removes its own intent.
-- KEYS[1]: writer key; KEYS[2]: readers' set; KEYS[3]: intent.
-- ARGV[1]: this attempt's value; ARGV[2]: lease in ms; ARGV[3]: intent expiry in ms ("0":
-- leave no intent, a single attempt); ARGV[4]: the writer's identity, the same for all its
-- attempts (the intent's value).
-- Returns {1, 0} granted, {0, pttl} refused (the writer's lease, or the latest reader's).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local w = redis.call('PTTL', KEYS[1])
if w ~= -2 then
  return {0, w}
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local intent = redis.call('GET', KEYS[3])
if #last > 0 then
  if ARGV[3] ~= '0' and (intent == false or intent == ARGV[4]) then
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
  end
  return {0, tonumber(last[2]) - now}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if intent == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
return {1, 0}
