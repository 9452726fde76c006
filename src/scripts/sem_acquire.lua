-- Take one permit of a semaphore on this node: slot ARGV[3] (1-based) of its k slot keys,
-- each an ordinary Redlock key (SET NX PX). A permit is a majority grant on one slot, the same
-- slot on every granting node; refused, the node says which slots are free here, so the next
-- round can pick one free on the most nodes.
-- KEYS[1..k]: the slot keys. ARGV[1]: this attempt's value; ARGV[2]: lease in ms; ARGV[3]: the
-- slot to take.
-- Returns {1, 0} granted; {0, pttl, free...} refused: pttl the soonest a slot here frees up
-- (0 when one is free now), then the 1-based numbers of the free slots.
local target = tonumber(ARGV[3])
if redis.call('SET', KEYS[target], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
local reply = {0, -1}
local soonest = nil
for i = 1, #KEYS do
  local pttl = redis.call('PTTL', KEYS[i])
  if pttl == -2 then
    reply[#reply + 1] = i
    soonest = 0
  elseif pttl >= 0 and (soonest == nil or pttl < soonest) then
    soonest = pttl
  end
end
if soonest ~= nil then
  reply[2] = soonest
end
return reply
