-- Atomic multi-policy rate-limit check. Mirrors src/engine.rs exactly (the conformance suite
-- compares the two). KEYS[i]: state of check i. ARGV[1]: now in ms, or '' to use Redis TIME
-- (so nodes with skewed clocks agree). ARGV[2]: cost (0 = peek). Then per check, 4 values:
-- algorithm (tb|log|ctr|fix), limit, window_ms, capacity.
-- Returns 5 integers per check: allowed, limit, remaining, reset_ms, retry_after_ms.
-- Units are consumed from every key only if every check allows.

local function ceil_div(a, b) return math.floor((a + b - 1) / b) end

local now_ms
if ARGV[1] ~= '' then
  now_ms = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cost = tonumber(ARGV[2])
local out, writes, all = {}, {}, true

for i = 1, #KEYS do
  local key = KEYS[i]
  local b = 2 + (i - 1) * 4
  local alg, limit, w, cap = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local allowed, remaining, reset, retry = 0, 0, 0, 0

  if alg == 'tb' then
    local now = now_ms * 1000
    local t = math.max(math.floor(w * 1000 / limit), 1)
    local tau = t * cap
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    if tat < now then tat = now end
    local new_tat = tat + t * cost
    local allow_at = new_tat - tau
    if allow_at <= now then
      local used = new_tat - now
      allowed, remaining, reset = 1, math.floor((tau - used) / t), ceil_div(used, 1000)
      writes[#writes + 1] = function()
        redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.max(ceil_div(new_tat - now, 1000), 1))
      end
    else
      local used = tat - now
      remaining, reset = math.floor(math.max(tau - used, 0) / t), ceil_div(used, 1000)
      retry = ceil_div(allow_at - now, 1000)
    end

  elseif alg == 'log' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - w)
    local raw = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local entries, used = {}, 0
    for j = 1, #raw, 2 do
      local c = tonumber(string.match(raw[j], ':(%d+)$'))
      entries[#entries + 1] = { tonumber(raw[j + 1]), c }
      used = used + c
    end
    local newest = entries[#entries] and entries[#entries][1]
    if used + cost <= limit then
      allowed, remaining = 1, limit - used - cost
      if cost > 0 then newest = now_ms end
      reset = newest and (newest + w - now_ms) or 0
      writes[#writes + 1] = function()
        local n = redis.call('ZCOUNT', key, now_ms, now_ms)
        redis.call('ZADD', key, now_ms, now_ms .. ':' .. n .. ':' .. cost)
        redis.call('PEXPIRE', key, w)
      end
    else
      remaining = math.max(limit - used, 0)
      reset = newest and (newest + w - now_ms) or 0
      local still, retry_at = used, now_ms
      for _, e in ipairs(entries) do
        still = still - e[2]
        retry_at = e[1] + w
        if still + cost <= limit then break end
      end
      retry = math.max(retry_at - now_ms, 1)
    end

  elseif alg == 'ctr' then
    local start = now_ms - (now_ms % w)
    local h = redis.call('HMGET', key, 's', 'p', 'c')
    local s0 = tonumber(h[1])
    local prev, curr = 0, 0
    if s0 == start then
      prev, curr = tonumber(h[2]), tonumber(h[3])
    elseif s0 and s0 + w == start then
      prev, curr = tonumber(h[3]), 0
    end
    local elapsed = now_ms - start
    local used = ceil_div(prev * (w - elapsed), w) + curr
    local window_end = start + w
    reset = window_end - now_ms
    if used + cost <= limit then
      allowed, remaining = 1, limit - used - cost
      writes[#writes + 1] = function()
        redis.call('HSET', key, 's', start, 'p', prev, 'c', curr + cost)
        redis.call('PEXPIRE', key, math.max(start + 2 * w - now_ms, 1))
      end
    else
      remaining = math.max(limit - used, 0)
      local retry_at
      if curr + cost <= limit and prev > 0 then
        local room = limit - curr - cost
        local e = w - math.floor(room * w / prev)
        retry_at = start + math.max(e, elapsed + 1)
      elseif cost <= limit then
        local room = limit - cost
        local e = 0
        if curr > 0 then e = math.max(w - math.floor(room * w / curr), 0) end
        retry_at = window_end + e
      else
        retry_at = window_end
      end
      retry = math.max(retry_at - now_ms, 1)
    end

  else -- fix
    local start = now_ms - (now_ms % w)
    local h = redis.call('HMGET', key, 's', 'n')
    local count = 0
    if tonumber(h[1]) == start then count = tonumber(h[2]) end
    reset = start + w - now_ms
    if count + cost <= limit then
      allowed, remaining = 1, limit - count - cost
      writes[#writes + 1] = function()
        redis.call('HSET', key, 's', start, 'n', count + cost)
        redis.call('PEXPIRE', key, math.max(start + w - now_ms, 1))
      end
    else
      remaining = math.max(limit - count, 0)
      retry = math.max(reset, 1)
    end
  end

  if allowed == 0 then all = false end
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = allowed, cap, remaining, reset, retry
end

if all and cost > 0 then
  for _, write in ipairs(writes) do write() end
end
return out
