-- Reset the lease of the lock's keys, only if this owner's value holds every one of them;
-- otherwise touch nothing.
-- KEYS: the lock keys; ARGV[1]: the owner's value; ARGV[2]: new lease in milliseconds.
-- Returns 1 extended, 0 some key absent (and none held by another), -1 some key held by
-- another value.
local absent = false
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == false then
    absent = true
  elseif current ~= ARGV[1] then
    return -1
  end
end
if absent then
  return 0
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
