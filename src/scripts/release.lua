-- Delete the lock's keys that this owner's value still holds; another owner's keys are left
-- untouched. Where it deleted, a single key's release or undo also announces it on ARGV[2],
-- the key's "<key>:released" channel, to subscribed waiters (who rely on it instead of
-- polling); "" announces nothing (a release handed to a local waiter, a split vote's undo
-- that its waiter retries, sets, whose waiters poll).
-- KEYS: the lock keys; ARGV[1]: the owner's value; ARGV[2]: channel or "".
-- Returns 1 + the subscribers told when something was deleted, 0 when no key was there, -1
-- when only another owner's keys were.
local deleted, other = false, false
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == ARGV[1] then
    redis.call('DEL', KEYS[i])
    deleted = true
  elseif current then
    other = true
  end
end
if deleted then
  local told = 0
  if ARGV[2] ~= '' then
    -- pcall: an ACL user without channel rights still releases (waiters then poll).
    local n = redis.pcall('PUBLISH', ARGV[2], '')
    if type(n) == 'number' then
      told = n
    end
  end
  return 1 + told
elseif other then
  return -1
end
return 0
