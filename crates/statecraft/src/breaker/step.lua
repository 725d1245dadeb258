-- statecraft: the breaker's step, a copy of breaker::machine::step in Lua
-- (state, input and output as breaker::wire writes them). Checked against
-- the Rust function by tests/breaker_script.rs. KEYS[1]: the breaker's key;
-- ARGV[1]: CONFIG|EVENT|entropy|now|ttl_ms|name (now 0: the server's clock),
-- or '?' to read the stored state ('?t': the server's time in ms, a space,
-- and the state). EVENT 'B <codes>' is a batch of records, each a step of
-- its own (code: 1 failed + 2 slow).

if ARGV[1] == '?' then return redis.call('GET', KEYS[1]) or '' end
if ARGV[1] == '?t' then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return string.format('%d', ms) .. ' ' .. (redis.call('GET', KEYS[1]) or '')
end

local U32 = 4294967295

local function split(s, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + #sep
  end
end

local function num(x)
  if x == nil or #x > 18 or not string.match(x, '^%d+$') then return nil end
  return tonumber(x)
end

local function bad()
  return redis.error_reply('statecraft:invalid_argument breaker step: malformed input')
end

local function fmt(n) return string.format('%d', n) end

-- Six fields; the name, last, may itself hold '|'.
local parts = split(ARGV[1], '|')
if #parts < 6 then return bad() end
local c = split(parts[1], ' ')
if #c ~= 19 then return bad() end
local cfg = {
  kind = c[1], size = num(c[2]), buckets = num(c[3]), min_calls = num(c[4]),
  consecutive = num(c[5]), in_window = num(c[6]), fr_num = num(c[7]), fr_den = num(c[8]),
  sr_num = num(c[9]), sr_den = num(c[10]), open_ms = num(c[11]), mult = num(c[12]),
  max_ms = num(c[13]), jitter = num(c[14]), probes = num(c[15]), close_kind = c[16],
  close_a = num(c[17]), close_b = num(c[18]), max_wait = num(c[19]),
}
for _, key in ipairs({'size', 'buckets', 'min_calls', 'consecutive', 'in_window', 'fr_num',
    'fr_den', 'sr_num', 'sr_den', 'open_ms', 'mult', 'max_ms', 'jitter', 'probes', 'close_a',
    'close_b', 'max_wait'}) do
  if cfg[key] == nil then return bad() end
end
local function ratio_ok(a, b) return a == 0 or (a > 0 and a <= b) end
if cfg.kind == 'c' then
  if cfg.size < 1 then return bad() end
elseif cfg.kind == 't' then
  if cfg.buckets < 1 or cfg.size < cfg.buckets or cfg.size % cfg.buckets ~= 0 then return bad() end
else
  return bad()
end
if cfg.close_kind == 's' then
  if cfg.close_a < 1 then return bad() end
elseif cfg.close_kind == 'f' then
  if cfg.close_a < 1 or cfg.close_a > cfg.close_b then return bad() end
else
  return bad()
end
if not ratio_ok(cfg.fr_num, cfg.fr_den) or not ratio_ok(cfg.sr_num, cfg.sr_den)
    or cfg.open_ms < 1 or cfg.mult < 1 or cfg.jitter > 1000 or cfg.probes < 1
    or cfg.max_wait < 1 then
  return bad()
end
local bucket_ms = 0
if cfg.kind == 't' then bucket_ms = math.floor(cfg.size / cfg.buckets) end

local e = split(parts[2], ' ')
local ev = { kind = e[1] }
if ev.kind == 'B' then
  ev.codes = e[2] or ''
  if #e ~= 2 or #ev.codes < 1 or #ev.codes > 4096 or string.find(ev.codes, '[^0-3]') then
    return bad()
  end
elseif ev.kind == 'R' then
  local outcomes = { s = 'success', f = 'failure', i = 'ignored' }
  ev.outcome = outcomes[e[2] or '']
  local flags = { ['0'] = false, ['1'] = true }
  ev.slow = flags[e[3] or '']
  -- A probe names its half-open spell; '-' is an ordinary call.
  if e[4] ~= '-' then
    ev.spell = num(e[4])
    if ev.spell == nil then return bad() end
  end
  if ev.outcome == nil or ev.slow == nil or #e ~= 4 then return bad() end
elseif not (ev.kind == 'A' or ev.kind == 'FO' or ev.kind == 'FC' or ev.kind == 'RS'
    or ev.kind == 'DI' or ev.kind == 'MO') or #e ~= 1 then
  return bad()
end
local entropy, now, ttl = num(parts[3]), num(parts[4]), num(parts[5])
if entropy == nil or entropy > U32 or now == nil or ttl == nil then return bad() end
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The window.
local function empty()
  -- A count window is a string of digits, one per call (1 failed, 2 slow):
  -- string functions do the per-call work in C.
  if cfg.kind == 'c' then return { codes = '' } end
  return { buckets = {} }
end

local function fresh(at)
  return { phase = 'CLOSED', since = at, open_until = 0, openings = 0, consecutive = 0,
    admitted = 0, ok = 0, fail = 0, calls = empty() }
end

local PHASES = { CLOSED = true, OPEN = true, HALF_OPEN = true, FORCED_OPEN = true,
  DISABLED = true, METRICS_ONLY = true }

local function decode(raw)
  local w = split(raw, ' ')
  if w[1] ~= 'b1' or #w < 10 or not PHASES[w[2]] then return nil end
  local st = { phase = w[2], since = num(w[3]), open_until = num(w[4]), openings = num(w[5]),
    consecutive = num(w[6]), admitted = num(w[7]), ok = num(w[8]), fail = num(w[9]) }
  for _, key in ipairs({'since', 'open_until', 'openings', 'consecutive', 'admitted', 'ok', 'fail'}) do
    if st[key] == nil then return nil end
  end
  for _, key in ipairs({'openings', 'consecutive', 'admitted', 'ok', 'fail'}) do
    if st[key] > U32 then return nil end
  end
  local window = w[10]
  if string.sub(window, 1, 2) == 'c:' then
    local codes = string.sub(window, 3)
    if string.find(codes, '[^0-3]') then return nil end
    st.calls = { codes = codes }
  elseif string.sub(window, 1, 2) == 't:' then
    local buckets = {}
    local list = string.sub(window, 3)
    if list ~= '' then
      for _, item in ipairs(split(list, ';')) do
        if item ~= '' then
          local p = split(item, ',')
          local b = { start = num(p[1]), calls = num(p[2]), failures = num(p[3]), slow = num(p[4]) }
          if b.start == nil or b.calls == nil or b.failures == nil or b.slow == nil then return nil end
          buckets[#buckets + 1] = b
        end
      end
    end
    st.calls = { buckets = buckets }
  else
    return nil
  end
  return st
end

local function encode(st)
  local out = { 'b1', st.phase, fmt(st.since), fmt(st.open_until), fmt(st.openings),
    fmt(st.consecutive), fmt(st.admitted), fmt(st.ok), fmt(st.fail) }
  local window
  if st.calls.codes then
    window = 'c:' .. st.calls.codes
  else
    local items = {}
    for i, b in ipairs(st.calls.buckets) do
      items[i] = fmt(b.start) .. ',' .. fmt(b.calls) .. ',' .. fmt(b.failures) .. ',' .. fmt(b.slow)
    end
    window = 't:' .. table.concat(items, ';')
  end
  out[#out + 1] = window
  return table.concat(out, ' ')
end

local function fits(calls)
  if cfg.kind == 'c' then
    return calls.codes ~= nil and #calls.codes <= cfg.size
  end
  if calls.buckets == nil or #calls.buckets > cfg.buckets + 1 then return false end
  for _, b in ipairs(calls.buckets) do
    if bucket_ms <= 0 or b.start % bucket_ms ~= 0 then return false end
  end
  return true
end

local function expire(calls, at)
  if cfg.kind ~= 't' then return end
  local horizon = math.max(at - cfg.size, 0)
  while #calls.buckets > 0 and calls.buckets[1].start + bucket_ms <= horizon do
    table.remove(calls.buckets, 1)
  end
end

local function record(calls, at, failed, slow)
  expire(calls, at)
  local f, s = 0, 0
  if failed then f = 1 end
  if slow then s = 1 end
  if cfg.kind == 'c' then
    local codes = calls.codes .. string.char(48 + f + 2 * s)
    if #codes > cfg.size then codes = string.sub(codes, -cfg.size) end
    calls.codes = codes
  else
    local length = math.max(bucket_ms, 1)
    local start = at - at % length
    local last = calls.buckets[#calls.buckets]
    if last ~= nil and last.start >= start then
      last.calls, last.failures, last.slow = last.calls + 1, last.failures + f, last.slow + s
    else
      calls.buckets[#calls.buckets + 1] = { start = start, calls = 1, failures = f, slow = s }
    end
  end
end

local function tally(calls, at)
  expire(calls, at)
  local t = { calls = 0, failures = 0, slow = 0 }
  if cfg.kind == 'c' then
    t.calls = #calls.codes
    t.failures = select(2, string.gsub(calls.codes, '[13]', ''))
    t.slow = select(2, string.gsub(calls.codes, '[23]', ''))
  else
    for _, b in ipairs(calls.buckets) do
      t.calls, t.failures, t.slow = t.calls + b.calls, t.failures + b.failures, t.slow + b.slow
    end
  end
  return t
end

local function reached(a, b, part, whole)
  return whole > 0 and part * b >= a * whole
end

local function trips(consecutive, t)
  local enough = t.calls >= cfg.min_calls
  return (cfg.consecutive > 0 and consecutive >= cfg.consecutive)
    or (cfg.in_window > 0 and t.failures >= cfg.in_window)
    or (enough and cfg.fr_num > 0 and reached(cfg.fr_num, cfg.fr_den, t.failures, t.calls))
    or (enough and cfg.sr_num > 0 and reached(cfg.sr_num, cfg.sr_den, t.slow, t.calls))
end

local function open_duration(openings)
  local length = cfg.open_ms
  for _ = 2, math.min(openings, 64) do
    length = length * cfg.mult
    if length >= cfg.max_ms then break end
  end
  if length > cfg.max_ms then length = cfg.max_ms end
  if cfg.jitter == 0 then return length end
  local spread = math.floor(length * cfg.jitter / 1000)
  local offset = entropy % (spread * 2 + 1)
  return math.max(length + offset - spread, 1)
end

local function enter(st, phase, at)
  local from = st.phase
  if phase == 'OPEN' then
    st.openings = math.min(st.openings + 1, U32)
    st.open_until = at + open_duration(st.openings)
  elseif phase == 'CLOSED' or phase == 'DISABLED' or phase == 'METRICS_ONLY' then
    st.openings, st.open_until = 0, 0
  end
  if phase ~= 'HALF_OPEN' then
    st.calls = empty()
    st.consecutive = 0
  end
  st.admitted, st.ok, st.fail = 0, 0, 0
  st.phase, st.since = phase, at
  if from ~= phase then return { from = from, to = phase } end
  return nil
end

local function merge(a, b)
  if a ~= nil and b ~= nil then
    if a.from ~= b.to then return { from = a.from, to = b.to } end
    return nil
  end
  return b or a
end

-- The step.
local raw = redis.call('GET', KEYS[1])
local baseline
local st
if raw then
  baseline = raw
  st = decode(raw) or fresh(now)
else
  baseline = encode(fresh(now))
  st = fresh(now)
end
if not fits(st.calls) then st.calls = empty() end

local decision, transition = 'D', nil
local manual = { FO = 'FORCED_OPEN', FC = 'CLOSED', RS = 'CLOSED', DI = 'DISABLED', MO = 'METRICS_ONLY' }

-- One event that is not an operator's (an ask, or a result).
local function one(ev)
  if st.phase == 'OPEN' and ev.kind == 'A' and now >= st.open_until then
    transition = merge(transition, enter(st, 'HALF_OPEN', now))
  end
  if st.phase == 'HALF_OPEN' and now >= st.since + cfg.max_wait then
    transition = merge(transition, enter(st, 'OPEN', now))
  end
  decision = 'D'
  if ev.kind == 'A' then
    if st.phase == 'CLOSED' or st.phase == 'DISABLED' or st.phase == 'METRICS_ONLY' then
      decision = 'P0'
    elseif st.phase == 'OPEN' then
      decision = 'J' .. fmt(math.max(st.open_until - now, 1))
    elseif st.phase == 'FORCED_OPEN' then
      decision = 'J-'
    elseif st.admitted < cfg.probes then
      st.admitted = st.admitted + 1
      decision = 'P1@' .. fmt(st.since)
    else
      decision = 'J' .. fmt(math.max(st.since + cfg.max_wait - now, 1))
    end
  elseif (st.phase == 'CLOSED' or st.phase == 'METRICS_ONLY') then
    if ev.outcome ~= 'ignored' then
      local failed = ev.outcome == 'failure'
      if failed then
        st.consecutive = math.min(st.consecutive + 1, U32)
      else
        st.consecutive = 0
      end
      record(st.calls, now, failed, ev.slow)
      local t = tally(st.calls, now)
      if st.phase == 'CLOSED' and trips(st.consecutive, t) then
        transition = merge(transition, enter(st, 'OPEN', now))
      end
    end
  elseif st.phase == 'HALF_OPEN' and ev.spell == st.since then
    local next_phase = nil
    if ev.outcome == 'ignored' then
      st.admitted = math.max(st.admitted - 1, 0)
    elseif ev.outcome == 'success' then
      st.ok = math.min(st.ok + 1, U32)
      if cfg.close_kind == 's' then
        if st.ok >= cfg.close_a then next_phase = 'CLOSED' end
      elseif reached(cfg.close_a, cfg.close_b, st.ok, cfg.probes) then
        next_phase = 'CLOSED'
      end
    else
      st.fail = math.min(st.fail + 1, U32)
      if cfg.close_kind == 's' then
        next_phase = 'OPEN'
      elseif not reached(cfg.close_a, cfg.close_b, math.max(cfg.probes - st.fail, 0), cfg.probes) then
        next_phase = 'OPEN'
      end
    end
    if next_phase then transition = merge(transition, enter(st, next_phase, now)) end
  end
end

if manual[ev.kind] then
  transition = enter(st, manual[ev.kind], now)
elseif ev.kind == 'B' then
  for i = 1, #ev.codes do
    local code = string.byte(ev.codes, i) - 48
    local outcome = 'success'
    if code % 2 == 1 then outcome = 'failure' end
    one({ kind = 'R', outcome = outcome, slow = code >= 2 })
  end
else
  one(ev)
end

local encoded = encode(st)
if encoded ~= baseline then
  if st.phase == 'FORCED_OPEN' or st.phase == 'DISABLED' or st.phase == 'METRICS_ONLY' then
    -- An operator's setting stays until an operator changes it.
    redis.call('SET', KEYS[1], encoded)
  else
    redis.call('SET', KEYS[1], encoded, 'PX', math.max(ttl, 1))
  end
end
local moved = '-'
if transition ~= nil then moved = transition.from .. '>' .. transition.to end
return decision .. ' ' .. moved
