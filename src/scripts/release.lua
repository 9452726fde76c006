-- Delete the lock's keys that this owner's value still holds; another owner's keys are left
-- untouched. A holder's release (ARGV[2] = "1") also announces it to waiters subscribed to
-- "<key>:released"; undoing a failed attempt does not, or contenders woken together would
-- collide again and again.
-- KEYS: the lock keys; ARGV[1]: the owner's value; ARGV[2]: "1" to publish.
-- Returns 1 + the most subscribers told for one key when something was deleted, 0 when no key
-- was there, -1 when only another owner's keys were.
local deleted, other, told = 0, false, 0
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == ARGV[1] then
    redis.call('DEL', KEYS[i])
    deleted = deleted + 1
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
if deleted > 0 then
  return 1 + told
elseif other then
  return -1
end
return 0
