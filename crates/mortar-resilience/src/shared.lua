-- One shared circuit breaker in Redis: src/breaker/core.rs (Core) in Lua, so that every node
-- of a cluster sees one state. Atomic per call; time from Redis TIME so nodes with skewed
-- clocks agree; all keys of a breaker share the hash tag {name} (Redis Cluster).
--
-- KEYS[1] state hash, KEYS[2] count window (a list of outcome codes), KEYS[3] permits in
-- flight (a sorted set: member -> expiry in ms; a member is <generation>.<kind>.<token>.<expiry>,
-- kind n = normal, p = half-open probe, u = untracked (disabled)).
-- ARGV[1] op: acquire | record | status | force_open | disable | reset
-- ARGV[2] now in ms, or '' for Redis TIME
-- ARGV[3..11] settings: window (count|time), window_size, window_ms, failure_rate_threshold,
--   slow_call_rate_threshold, slow_call_ms, minimum_calls, wait_open_ms, half_open_calls
-- ARGV[12] permit lifetime in ms
-- acquire: ARGV[13] a token unique across nodes (<node>-<seq>), ARGV[14] most permits in flight
-- record: ARGV[13] the member, ARGV[14] success | failure | cancelled, ARGV[15] duration_ms
-- Reply, all strings: result (ok | rejected | busy | expired | used), state, member, ms (permit
-- lifetime, or retry-after when rejected), counted (0|1), transition from, transition to,
-- calls, failures, slow, probes in flight, last transition from, to, at (ms).

local H, RING, PERMITS = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local kind, size, wms = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local fthr, sthr, slow_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local minc, wait, hoc, ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])

local function num(v) return tonumber(v or '0') or 0 end
local function str(v) return string.format('%.0f', v) end

local f = redis.call('HMGET', H, 'state', 'gen', 'opened', 'padm', 'pc', 'pf', 'ps',
  'calls', 'fail', 'slow', 'shape', 'lf', 'lt', 'la')
local st = {
  state = f[1] or 'closed', gen = num(f[2]), opened = num(f[3]), padm = num(f[4]),
  pc = num(f[5]), pf = num(f[6]), ps = num(f[7]),
  calls = num(f[8]), fail = num(f[9]), slow = num(f[10]),
  shape = f[11] or '', lf = f[12] or '', lt = f[13] or '', la = num(f[14]),
}

-- Time windows: 10 buckets b0..b9 of 'slot:calls:failures:slow' in the state hash.
local BUCKETS = 10
local bucket_ms = math.max(math.floor(wms / BUCKETS), 1)
local buckets, touched = {}, {}
if kind == 'time' then
  local raw = redis.call('HMGET', H, 'b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'b8', 'b9')
  for i = 0, BUCKETS - 1 do
    local v = raw[i + 1]
    if v then
      local s, c, fl, sl = string.match(v, '^(%d+):(%d+):(%d+):(%d+)$')
      if s then buckets[i] = { tonumber(s), tonumber(c), tonumber(fl), tonumber(sl) } end
    end
  end
end

local function clear_window()
  st.calls, st.fail, st.slow = 0, 0, 0
  redis.call('DEL', RING)
  for i = 0, BUCKETS - 1 do
    if buckets[i] then buckets[i] = nil; touched[i] = true end
  end
  redis.call('HDEL', H, 'b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'b8', 'b9')
end

-- A window of another kind or size: its counts no longer apply.
local shape = (kind == 'count') and ('c' .. size) or ('t' .. wms)
if st.shape ~= shape then
  clear_window()
  st.shape = shape
end

local function expire()
  if kind ~= 'time' then return end
  local current = math.floor(now / bucket_ms)
  for i = 0, BUCKETS - 1 do
    local b = buckets[i]
    if b and b[1] + BUCKETS <= current then
      st.calls, st.fail, st.slow = st.calls - b[2], st.fail - b[3], st.slow - b[4]
      buckets[i] = nil
      touched[i] = true
    end
  end
end

local function window_record(failed, slow)
  if kind == 'count' then
    redis.call('RPUSH', RING, failed + 2 * slow)
    if redis.call('LLEN', RING) > size then
      local old = tonumber(redis.call('LPOP', RING))
      st.calls, st.fail, st.slow = st.calls - 1, st.fail - (old % 2), st.slow - math.floor(old / 2)
    end
  else
    expire()
    local slot = math.floor(now / bucket_ms)
    local i = slot % BUCKETS
    local b = buckets[i]
    if not b or b[1] ~= slot then b = { slot, 0, 0, 0 } end
    b[2], b[3], b[4] = b[2] + 1, b[3] + failed, b[4] + slow
    buckets[i] = b
    touched[i] = true
  end
  st.calls, st.fail, st.slow = st.calls + 1, st.fail + failed, st.slow + slow
end

local tfrom, tto = '', ''
local function move_to(to)
  tfrom, tto = st.state, to
  st.lf, st.lt, st.la = st.state, to, now
  st.state = to
  st.gen = st.gen + 1
  st.padm, st.pc, st.pf, st.ps = 0, 0, 0, 0
  if to == 'closed' or to == 'half_open' then clear_window() end
end

local function open()
  st.opened = now
  move_to('open')
end

local function rate(x, of)
  if of == 0 then return 0 end
  return x * 100 / of
end

local function tripped(calls, failures, slow)
  return rate(failures, calls) >= fthr or (slow > 0 and rate(slow, calls) >= sthr)
end

local function judge_probes()
  if tripped(st.pc, st.pf, st.ps) then open() else move_to('closed') end
end

-- Permits past their expiry count as nothing; an expired probe frees its slot.
local function sweep()
  local expired = redis.call('ZRANGEBYSCORE', PERMITS, '-inf', now, 'LIMIT', 0, 1000)
  if #expired == 0 then return end
  for _, m in ipairs(expired) do
    local g, k = string.match(m, '^(%d+)%.(%a)%.')
    if k == 'p' and tonumber(g) == st.gen and st.state == 'half_open' then
      st.padm = st.padm - 1
    end
  end
  redis.call('ZREM', PERMITS, unpack(expired))
end

sweep()
expire()
-- Settings lowered half_open_calls below the probes already finished: the verdict is due.
if st.state == 'half_open' and st.pc > 0 and st.pc >= hoc then judge_probes() end

local result, member, ms, counted = 'ok', '', 0, 0

if op == 'acquire' then
  if st.state == 'open' and now >= st.opened + wait then move_to('half_open') end
  local k
  if st.state == 'closed' then
    k = 'n'
  elseif st.state == 'disabled' then
    k = 'u'
  elseif st.state == 'half_open' and st.padm < hoc then
    st.padm = st.padm + 1
    k = 'p'
  end
  if k and redis.call('ZCARD', PERMITS) >= tonumber(ARGV[14]) then
    -- As many permits as allowed are unrecorded: refuse, and undo the probe slot.
    if k == 'p' then st.padm = st.padm - 1 end
    result = 'busy'
  elseif k then
    member = str(st.gen) .. '.' .. k .. '.' .. ARGV[13] .. '.' .. str(now + ttl)
    redis.call('ZADD', PERMITS, now + ttl, member)
    ms = ttl
  else
    result = 'rejected'
    if st.state == 'open' then ms = math.max(st.opened + wait - now, 0) end
  end
elseif op == 'record' then
  member = ARGV[13]
  if not redis.call('ZSCORE', PERMITS, member) then
    local exp = tonumber(string.match(member, '%.(%d+)$')) or 0
    if exp <= now then result = 'expired' else result = 'used' end
  else
    redis.call('ZREM', PERMITS, member)
    local g, k = string.match(member, '^(%d+)%.(%a)%.')
    local outcome, duration = ARGV[14], tonumber(ARGV[15])
    if tonumber(g) == st.gen then
      if outcome == 'cancelled' then
        if k == 'p' then st.padm = st.padm - 1 end
      elseif k ~= 'u' then
        counted = 1
        local failed = (outcome == 'failure') and 1 or 0
        local slow = (duration >= slow_ms) and 1 or 0
        if k == 'n' then
          window_record(failed, slow)
          if st.calls >= minc and tripped(st.calls, st.fail, st.slow) then open() end
        else
          st.pc, st.pf, st.ps = st.pc + 1, st.pf + failed, st.ps + slow
          if st.pc >= hoc then judge_probes() end
        end
      end
    end
  end
elseif op == 'force_open' then
  if st.state ~= 'forced_open' then move_to('forced_open') end
elseif op == 'disable' then
  if st.state ~= 'disabled' then move_to('disabled') end
elseif op == 'reset' then
  clear_window()
  if st.state ~= 'closed' then move_to('closed') end
  st.gen = st.gen + 1
end

redis.call('HSET', H, 'state', st.state, 'gen', str(st.gen), 'opened', str(st.opened),
  'padm', str(st.padm), 'pc', str(st.pc), 'pf', str(st.pf), 'ps', str(st.ps),
  'calls', str(st.calls), 'fail', str(st.fail), 'slow', str(st.slow), 'shape', st.shape,
  'lf', st.lf, 'lt', st.lt, 'la', str(st.la))
for i, _ in pairs(touched) do
  local b = buckets[i]
  if b then
    redis.call('HSET', H, 'b' .. i, str(b[1]) .. ':' .. str(b[2]) .. ':' .. str(b[3]) .. ':' .. str(b[4]))
  else
    redis.call('HDEL', H, 'b' .. i)
  end
end

local in_flight = 0
if st.state == 'half_open' then in_flight = st.padm - st.pc end
return { result, st.state, member, str(ms), str(counted), tfrom, tto, str(st.calls),
  str(st.fail), str(st.slow), str(in_flight), st.lf, st.lt, str(st.la) }
