-- Runs several requests of this client to this node in one call, in order: each is one of
-- the scripts above (acquire, release, extend, fence), which the client prepends as local
-- functions of (KEYS, ARGV). One call instead of one per request saves Redis the cost of
-- starting a script per request when many locks are taken at once.
-- ARGV[1]: m, the number of requests; then m headers of 3 (script 1-4, number of keys,
-- number of arguments); then every request's arguments in order. KEYS: every request's keys
-- in order.
-- Returns one reply per request; a request that raised an error replies "!<message>" instead
-- (no script returns a string), and the others are unaffected.
local scripts = {acquire, release, extend, fence}
local m = tonumber(ARGV[1])
local out = {}
local k, a = 1, 2 + 3 * m
for j = 1, m do
  local h = 3 * j - 1
  local script = scripts[tonumber(ARGV[h])]
  local nk, na = tonumber(ARGV[h + 1]), tonumber(ARGV[h + 2])
  local keys, argv = {}, {}
  for x = 1, nk do
    keys[x] = KEYS[k + x - 1]
  end
  for x = 1, na do
    argv[x] = ARGV[a + x - 1]
  end
  k, a = k + nk, a + na
  local ok, reply = pcall(script, keys, argv)
  if ok then
    out[j] = reply
  elseif type(reply) == 'table' and reply.err then
    out[j] = '!' .. reply.err
  else
    out[j] = '!' .. tostring(reply)
  end
end
return out
