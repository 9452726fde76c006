-- Take the lock on this node if nobody holds any of its keys; all of them or none.
-- KEYS[1..n]: the lock keys (n = ARGV[4]); KEYS[n+1]: the fencing counter (with fencing).
-- ARGV[1]: this attempt's unique value; ARGV[2]: lease in milliseconds; ARGV[3]: "1" for
-- fencing; ARGV[4]: n.
-- Returns {1, counter} when granted (counter 0 without fencing), {0, pttl} when a key is held
-- by another value (pttl: the longest remaining lease among them in ms, -1 if one has none).
local n = tonumber(ARGV[4])
local function granted()
  if ARGV[3] == '1' then
    return {1, redis.call('INCR', KEYS[n + 1])}
  end
  return {1, 0}
end
if n == 1 then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return granted()
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local longest = nil
for i = 1, n do
  local pttl = redis.call('PTTL', KEYS[i])
  if pttl ~= -2 then
    if longest == nil or pttl == -1 or (longest ~= -1 and pttl > longest) then
      longest = pttl
    end
  end
end
if longest ~= nil then
  return {0, longest}
end
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return granted()
