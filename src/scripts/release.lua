-- Delete the lock's keys that this owner's value still holds; another owner's keys are left
-- untouched. Where it deleted a key, and ARGV[2] is "1", it also announces that on the key's
-- "<key>:released" channel to subscribed waiters (who rely on it instead of polling); a set's
-- release announces each of its keys (a single-key waiter of one of them listens there). "0"
-- announces nothing: a release handed to a local waiter, or a split vote's undo that its
-- waiter retries.
-- KEYS: the lock keys; ARGV[1]: the owner's value; ARGV[2]: "1" to announce, "0" not.
-- Returns 1 + the most subscribers told on one channel when something was deleted, 0 when no
-- key was there, -1 when only another owner's keys were.
local deleted, other, told = false, false, 0
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == ARGV[1] then
    redis.call('DEL', KEYS[i])
    deleted = true
    if ARGV[2] == '1' then
      -- pcall: an ACL user without channel rights still releases (waiters then poll).
      local n = redis.pcall('PUBLISH', KEYS[i] .. ':released', '')
      if type(n) == 'number' and n > told then
        told = n
      end
    end
  elseif current then
    other = true
  end
end
if deleted then
  return 1 + told
elseif other then
  return -1
end
return 0
