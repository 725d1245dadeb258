-- statecraft: the limiter's step, a copy of limiter::algorithm::decide in
-- Lua (input, state and output as limiter::shared writes them), checked
-- against the Rust function by tests/limiter_native.rs. The chunk returns
-- the step as a function of (keys, args): the Redis backend loads it once
-- as a Redis Function library, or runs it per call by EVALSHA on servers
-- without functions. keys[1]: the limit's key; args[1]:
-- '<a> <count> <period us> <burst> <cost> <now us>' (now 0: the server's
-- clock; a cost of '-<n>' gives n permits back). Every figure stays below 2^53 (the quota's rules, checked here
-- too), so Lua's doubles compute exactly what the Rust integers do; a
-- division of two such integers, floored or ceiled, is exact as well.

local EXACT = 9007199254740992 -- 2^53
local HORIZON = 2251799813685248 -- 2^51: GCRA's furthest look ahead
local YEAR = 31622400000000 -- 366 days, in us
local U32 = 4294967295

local function bad(why)
  return redis.error_reply('statecraft:invalid_argument limiter step: ' .. why)
end

local function fmt(n) return string.format('%d', n) end

local function num(x)
  if x == nil or #x == 0 or #x > 16 or not string.match(x, '^%d+$') then return nil end
  return tonumber(x)
end

-- The shape of each algorithm's stored state (limiter::shared).
local SHAPES = {
  g = '^g (%d+)$',
  t = '^t (%d+) (%d+) (%d+)$',
  s = '^s (%d+) (%d+) (%d+)$',
  f = '^f (%d+) (%d+)$',
}

-- The stored state of algorithm `a` as a list: its letter, then its
-- numbers (nil: none, damaged, or another algorithm's).
local function parse_state(raw, a)
  if not raw then return nil end
  local x, y, z = string.match(raw, SHAPES[a])
  if not x or #x > 16 or (y and #y > 16) or (z and #z > 16) then return nil end
  return { a, tonumber(x), y and tonumber(y), z and tonumber(z) }
end

local function gcra(count, period, burst, st, cost, now)
  local interval = math.ceil(period / count)
  local horizon = burst * interval
  local tat = now
  if st and st[1] == 'g' then tat = math.min(math.max(st[2], now), now + horizon) end
  local free = now + horizon - tat
  if cost > burst then return 'L', burst, math.floor(free / interval), 0, tat - now end
  local new_tat = tat + cost * interval
  if new_tat > now + horizon then
    return 'D', burst, math.floor(free / interval), new_tat - now - horizon, tat - now
  end
  return 'A', burst, math.floor((now + horizon - new_tat) / interval), 0, new_tat - now,
    'g ' .. fmt(new_tat), new_tat - now
end

-- A token bucket's level at `now` (limiter::algorithm's `refilled`).
local function refilled(count, period, capacity, st, now)
  if not (st and st[1] == 't' and st[2] == period) then return capacity end
  local stored = math.min(st[3], capacity)
  local elapsed = math.max(now - st[4], 0)
  if elapsed < math.ceil((capacity - stored) / count) then return stored + elapsed * count end
  return capacity
end

local function token_bucket(count, period, burst, st, cost, now)
  local capacity = burst * period
  local level = refilled(count, period, capacity, st, now)
  local function until_full(l) return math.ceil((capacity - l) / count) end
  if cost > burst then return 'L', burst, math.floor(level / period), 0, until_full(level) end
  local need = cost * period
  if need > level then
    return 'D', burst, math.floor(level / period), math.ceil((need - level) / count), until_full(level)
  end
  local left = level - need
  return 'A', burst, math.floor(left / period), 0, until_full(left),
    't ' .. fmt(period) .. ' ' .. fmt(left) .. ' ' .. fmt(now), until_full(left)
end

local function sliding_window(count, period, st, cost, now)
  local window, limit = period, count
  local start = now - now % window
  local previous, current = 0, 0
  if st and st[1] == 's' then
    -- A window ahead (the clock stepped back) counts as this one.
    if st[2] >= start then
      previous, current = math.min(st[3], limit), math.min(st[4], limit)
    elseif st[2] + window == start then
      previous = math.min(st[4], limit)
    end
  end
  local elapsed = now - start
  local weight = window - elapsed
  local budget = limit * window
  local used = previous * weight + current * window
  local remaining = math.floor(math.max(budget - used, 0) / window)
  local reset = 0
  if current > 0 then reset = weight + window elseif previous > 0 then reset = weight end
  if cost > limit then return 'L', limit, remaining, 0, reset end
  if cost > 0 and used + cost * window > budget then
    local retry
    if current + cost <= limit then
      retry = window - math.floor((limit - current - cost) * window / previous) - elapsed
    else
      retry = weight + window - math.floor((limit - cost) * window / current)
    end
    return 'D', limit, remaining, retry, reset
  end
  local now_current = current + cost
  if now_current > 0 then reset = weight + window end
  return 'A', limit, math.floor(math.max(budget - used - cost * window, 0) / window), 0, reset,
    's ' .. fmt(start) .. ' ' .. fmt(previous) .. ' ' .. fmt(now_current), weight + window
end

local function fixed_window(count, period, st, cost, now)
  local window, limit = period, count
  local start = now - now % window
  local used = 0
  if st and st[1] == 'f' and st[2] >= start then used = math.min(st[3], limit) end
  local ends = start + window - now
  local reset = 0
  if used > 0 then reset = ends end
  if cost > limit then return 'L', limit, limit - used, 0, reset end
  if used + cost > limit then return 'D', limit, limit - used, ends, reset end
  if used + cost > 0 then reset = ends else reset = 0 end
  return 'A', limit, limit - used - cost, 0, reset,
    'f ' .. fmt(start) .. ' ' .. fmt(used + cost), ends
end

-- The state after giving back `permits` (limiter::algorithm::refund), or
-- nil when there is nothing to give them back to.
local function refund(a, count, period, burst, st, permits, now)
  if a == 'g' and st and st[1] == 'g' then
    local interval = math.ceil(period / count)
    local tat = math.min(math.max(st[2], now), now + burst * interval)
    return 'g ' .. fmt(math.max(tat - math.min(permits, burst) * interval, now))
  elseif a == 't' and st and st[1] == 't' and st[2] == period then
    local capacity = burst * period
    local level = math.min(refilled(count, period, capacity, st, now) + math.min(permits, burst) * period,
      capacity)
    return 't ' .. fmt(period) .. ' ' .. fmt(level) .. ' ' .. fmt(now)
  elseif a == 's' and st and st[1] == 's' and
      (st[2] == now - now % period or st[2] + period == now - now % period) then
    local start = now - now % period
    local previous, current = 0, 0
    if st[2] == start then
      previous, current = math.min(st[3], count), math.min(st[4], count)
    else
      previous = math.min(st[4], count)
    end
    -- The previous window's first (a refund is under-credited, never over).
    local from_previous = math.min(permits, previous)
    local from_current = math.min(permits - from_previous, current)
    return 's ' .. fmt(start) .. ' ' .. fmt(previous - from_previous) .. ' ' ..
      fmt(current - from_current)
  elseif a == 'f' and st and st[1] == 'f' and st[2] == now - now % period then
    local used = math.min(st[3], count)
    return 'f ' .. fmt(st[2]) .. ' ' .. fmt(used - math.min(permits, used))
  end
  return nil
end

local function decide(a, count, period, burst, st, cost, now)
  if a == 'g' then return gcra(count, period, burst, st, cost, now)
  elseif a == 't' then return token_bucket(count, period, burst, st, cost, now)
  elseif a == 's' then return sliding_window(count, period, st, cost, now)
  end
  return fixed_window(count, period, st, cost, now)
end

-- The quota's rules (limiter::quota), so that bad input is refused here
-- as the Rust step refuses it.
local function invalid(a, count, period, burst)
  if count < 1 or burst < 1 or period < 1 or period > YEAR then return 'a figure out of range' end
  if a == 'g' then
    if count > period or burst * math.ceil(period / count) > HORIZON then return 'a GCRA quota out of range' end
  elseif a == 't' then
    if burst * period + count >= EXACT then return 'a token bucket out of range' end
  else
    if burst ~= count or count > U32 or count * period * 2 >= EXACT then
      return 'a window out of range'
    end
  end
  return nil
end

local function px(ttl) return math.max(math.ceil(math.max(ttl, 1) / 1000), 1) end

-- Quotas seen, parsed and checked (at most 64 kept): a call's answer never
-- depends on this cache, which the server may drop at any time.
local QUOTAS, QUOTAS_KEPT = {}, 0

local function quota_of(text)
  local q = QUOTAS[text]
  if q then return q end
  local a, c, p, b = string.match(text, '^([gtsf]) (%d+) (%d+) (%d+)$')
  local count, period, burst = num(c), num(p), num(b)
  if not (a and count and period and burst) then return nil, 'malformed input' end
  local why = invalid(a, count, period, burst)
  if why then return nil, why end
  if QUOTAS_KEPT >= 64 then QUOTAS, QUOTAS_KEPT = {}, 0 end
  q = { a, count, period, burst }
  QUOTAS[text], QUOTAS_KEPT = q, QUOTAS_KEPT + 1
  return q
end

local function run(keys, args)
  local key = keys[1]
  local head, giving, k, n = string.match(args[1] or '', '^([gtsf] %d+ %d+ %d+) (%-?)(%d+) (%d+)$')
  if not head or #k > 16 or #n > 16 then return bad('malformed input') end
  giving = giving == '-'
  local cost, now = tonumber(k), tonumber(n)
  local q, why = quota_of(head)
  if not q then return bad(why) end
  local a, count, period, burst = q[1], q[2], q[3], q[4]
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local st = parse_state(redis.call('GET', key) or nil, a)
  local verdict, limit, remaining, retry, reset, state, ttl
  if giving then
    local given = refund(a, count, period, burst, st, cost, now)
    local after = st
    if given then after = parse_state(given, a) end
    verdict, limit, remaining, retry, reset = decide(a, count, period, burst, after, 0, now)
    if given and cost > 0 then redis.call('SET', key, given, 'PX', fmt(px(reset))) end
  else
    verdict, limit, remaining, retry, reset, state, ttl = decide(a, count, period, burst, st, cost, now)
    if state and cost > 0 then redis.call('SET', key, state, 'PX', fmt(px(ttl))) end
  end
  return string.format('%s %d %d %d %d', verdict, limit, remaining, retry, reset)
end

return run
