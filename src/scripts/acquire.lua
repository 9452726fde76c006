-- Take the lock on this node if nobody holds it.
-- KEYS[1]: lock key; KEYS[2]: its fencing counter (persistent, no TTL).
-- ARGV[1]: this attempt's unique value; ARGV[2]: lease in milliseconds; ARGV[3]: "1" for fencing.
-- Returns {1, counter} when granted (counter 0 without fencing), {0, pttl} when another value
-- holds the key (pttl: its remaining lease in ms, -1 if it has none).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] == '1' then
    return {1, redis.call('INCR', KEYS[2])}
  end
  return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
