-- Lock operations for the Redis backend. Mirrors src/engine.rs (the conformance suite runs the
-- same tests on every backend). Time is Redis's clock. Every key of a name shares a hash tag.
-- KEYS: 1 holders (hash lease_id -> "token|expires|acquired|owner")
--       2 line (zset ticket -> arrival seq)   3 waiters (hash ticket -> "until|node|owner")
--       4 permits (string)   5 fencing counter (string)   6 arrival counter (string)
--       7 node leases, shared by every name (hash node -> expires ms): a waiter whose node's
--         lease lapsed (the node died) is out of the line
-- ARGV[1]: operation; the rest depends on it (see each branch).

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op = ARGV[1]

-- Drops expired leases and waiters; returns live holders {lease, token, expires, acquired, owner}
-- and the live line {ticket, until, owner} in arrival order.
local function load()
  local holders = {}
  local raw = redis.call('HGETALL', KEYS[1])
  for i = 1, #raw, 2 do
    local token, exp, acq, owner = string.match(raw[i + 1], '^(%d+)|(%d+)|(%d+)|(.*)$')
    if tonumber(exp) <= now then
      redis.call('HDEL', KEYS[1], raw[i])
    else
      holders[#holders + 1] = { raw[i], token, exp, acq, owner }
    end
  end
  local line = {}
  local alive = {}
  for _, ticket in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local w = redis.call('HGET', KEYS[3], ticket)
    local untl, node, owner = string.match(w or '0||', '^(%d+)|([^|]*)|(.*)$')
    if node ~= '' and alive[node] == nil then
      alive[node] = tonumber(redis.call('HGET', KEYS[7], node) or '0') > now
    end
    if tonumber(untl) <= now or (node ~= '' and not alive[node]) then
      redis.call('ZREM', KEYS[2], ticket)
      redis.call('HDEL', KEYS[3], ticket)
    else
      line[#line + 1] = { ticket, untl, owner }
    end
  end
  return holders, line
end

-- Keeps lease and line keys only as long as they matter; the counters stay.
local function tidy(holders, line)
  local last = 0
  for _, h in ipairs(holders) do last = math.max(last, tonumber(h[3])) end
  for _, w in ipairs(line) do last = math.max(last, tonumber(w[2])) end
  if last > now then
    for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], last - now + 60000) end
  end
end

local function flat(holders, line)
  local out = { tostring(now), tostring(#holders) }
  for _, h in ipairs(holders) do for k = 1, 5 do out[#out + 1] = tostring(h[k]) end end
  for _, w in ipairs(line) do for k = 1, 3 do out[#out + 1] = tostring(w[k]) end end
  return out
end

local function permits_of(holders, line, asked)
  if #holders == 0 and #line == 0 then
    redis.call('SET', KEYS[4], asked)
    return asked
  end
  return tonumber(redis.call('GET', KEYS[4]) or asked)
end

if op == 'acquire' then
  -- ARGV: 2 lease_id, 3 owner, 4 ttl_ms, 5 permits, 6 ticket ('' for a newcomer)
  local lease, owner, ttl, asked, ticket = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  local holders, line = load()
  local permits = permits_of(holders, line, asked)
  if permits ~= asked then return { 'mismatch', tostring(permits) } end
  local free = permits - #holders
  local allowed = false
  if ticket == '' then
    allowed = #line == 0 and free > 0
  else
    for rank, w in ipairs(line) do
      if w[1] == ticket then allowed = rank <= free break end
    end
  end
  if not allowed then
    local out = flat(holders, line)
    table.insert(out, 1, 'busy')
    return out
  end
  -- Tokens grow by one, and are never below Redis's clock in microseconds: if Redis lost the
  -- counter (restart without persistence), new tokens still exceed every earlier one.
  local token = math.max(tonumber(redis.call('GET', KEYS[5]) or '0') + 1, now_us)
  redis.call('SET', KEYS[5], string.format('%.0f', token))
  local exp = now + ttl
  redis.call('HSET', KEYS[1], lease, string.format('%.0f|%d|%d|%s', token, exp, now, owner))
  if ticket ~= '' then
    redis.call('ZREM', KEYS[2], ticket)
    redis.call('HDEL', KEYS[3], ticket)
  end
  holders[#holders + 1] = { lease, token, exp, now, owner }
  tidy(holders, line)
  return { 'granted', string.format('%.0f', token), tostring(exp), tostring(now) }

elseif op == 'enqueue' then
  -- ARGV: 2 ticket, 3 owner, 4 wait_ms, 5 permits, 6 node, 7 node lease ms
  -- The node's lease goes in with its waiter, so the line never sees a waiter of a node it
  -- does not know yet; the node's heartbeat keeps it alive from then on.
  redis.call('HSET', KEYS[7], ARGV[6], now + tonumber(ARGV[7]))
  local holders, line = load()
  permits_of(holders, line, tonumber(ARGV[5]))
  local seq = redis.call('INCR', KEYS[6])
  redis.call('ZADD', KEYS[2], seq, ARGV[2])
  local untl = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[2], string.format('%d|%s|%s', untl, ARGV[6], ARGV[3]))
  line[#line + 1] = { ARGV[2], untl, ARGV[3] }
  tidy(holders, line)
  return 'ok'

elseif op == 'heartbeat' then
  -- ARGV: 2 node, 3 node lease ms. Also forgets nodes gone for an hour.
  redis.call('HSET', KEYS[7], ARGV[2], now + tonumber(ARGV[3]))
  local nodes = redis.call('HGETALL', KEYS[7])
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) < now - 3600000 then redis.call('HDEL', KEYS[7], nodes[i]) end
  end
  return 'ok'

elseif op == 'dequeue' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 'ok'

elseif op == 'renew' then
  -- ARGV: 2 lease_id, 3 ttl_ms
  local v = redis.call('HGET', KEYS[1], ARGV[2])
  if not v then return false end
  local token, exp, acq, owner = string.match(v, '^(%d+)|(%d+)|(%d+)|(.*)$')
  if tonumber(exp) <= now then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return false
  end
  local new_exp = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[2], string.format('%s|%d|%s|%s', token, new_exp, acq, owner))
  local holders, line = load()
  tidy(holders, line)
  return { token, tostring(new_exp), acq, owner }

elseif op == 'release' then
  local v = redis.call('HGET', KEYS[1], ARGV[2])
  if not v then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[2])
  local exp = tonumber(string.match(v, '^%d+|(%d+)|'))
  if exp <= now then return 0 end
  return 1

elseif op == 'evict' then
  -- ARGV: 2 lease_id ('' for every holder). An operator's force-release: ends live leases,
  -- keeps the line and the fencing counter; returns the ended leases, 5 fields each.
  local holders, line = load()
  local kept, out = {}, {}
  for _, h in ipairs(holders) do
    if ARGV[2] == '' or h[1] == ARGV[2] then
      redis.call('HDEL', KEYS[1], h[1])
      for k = 1, 5 do out[#out + 1] = tostring(h[k]) end
    else
      kept[#kept + 1] = h
    end
  end
  tidy(kept, line)
  return out

else -- inspect
  local holders, line = load()
  local out = flat(holders, line)
  table.insert(out, 1, redis.call('GET', KEYS[4]) or '0')
  return out
end
