-- statecraft: the breaker's step, a copy of breaker::machine::step in Lua
-- (state, input and output as breaker::wire writes them). Checked against
-- the Rust function by tests/breaker_script.rs. The chunk returns the step
-- as a function of (keys, args): the Redis backend loads it once as a
-- Redis Function library (so the helpers and the parsed configurations
-- below outlive a call), or runs it per call by EVALSHA on servers without
-- functions. keys[1]: the breaker's key; args[1]:
-- CONFIG|EVENT|entropy|now|ttl_ms|name (now 0: the server's clock), or '?'
-- to read the stored state ('?t': the server's time in ms, a space, and the
-- state). EVENT 'B <codes>' is a batch of records, each a step of its own
-- (code: 1 failed + 2 slow). Redis runs one call at a time, so the
-- chunk-level state a call sets (cfg, now, st, ...) is its own.

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

local function ratio_ok(a, b) return a == 0 or (a > 0 and a <= b) end

-- A configuration's text read and checked, or nil.
local function parse_config(text)
  local c = split(text, ' ')
  if #c ~= 19 then return nil end
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
    if cfg[key] == nil then return nil end
  end
  if cfg.kind == 'c' then
    if cfg.size < 1 then return nil end
  elseif cfg.kind == 't' then
    if cfg.buckets < 1 or cfg.size < cfg.buckets or cfg.size % cfg.buckets ~= 0 then return nil end
  else
    return nil
  end
  if cfg.close_kind == 's' then
    if cfg.close_a < 1 then return nil end
  elseif cfg.close_kind == 'f' then
    if cfg.close_a < 1 or cfg.close_a > cfg.close_b then return nil end
  else
    return nil
  end
  if not ratio_ok(cfg.fr_num, cfg.fr_den) or not ratio_ok(cfg.sr_num, cfg.sr_den)
      or cfg.open_ms < 1 or cfg.mult < 1 or cfg.jitter > 1000 or cfg.probes < 1
      or cfg.max_wait < 1 then
    return nil
  end
  cfg.bucket_ms = 0
  if cfg.kind == 't' then cfg.bucket_ms = math.floor(cfg.size / cfg.buckets) end
  return cfg
end

-- Configurations already read, by their text (a loaded library keeps them
-- between calls; a few breakers' worth, then it starts again).
local CONFIGS, CONFIGS_KEPT = {}, 0

local function config(text)
  local cfg = CONFIGS[text]
  if cfg then return cfg end
  cfg = parse_config(text)
  if cfg == nil then return nil end
  if CONFIGS_KEPT >= 64 then CONFIGS, CONFIGS_KEPT = {}, 0 end
  CONFIGS[text], CONFIGS_KEPT = cfg, CONFIGS_KEPT + 1
  return cfg
end

local OUTCOMES = { s = 'success', f = 'failure', i = 'ignored' }
local FLAGS = { ['0'] = false, ['1'] = true }
local SIMPLE = { A = true, FO = true, FC = true, RS = true, DI = true, MO = true }
local MANUAL = { FO = 'FORCED_OPEN', FC = 'CLOSED', RS = 'CLOSED', DI = 'DISABLED', MO = 'METRICS_ONLY' }
local PHASES = { CLOSED = true, OPEN = true, HALF_OPEN = true, FORCED_OPEN = true,
  DISABLED = true, METRICS_ONLY = true }

-- An event's text read, or nil.
local function parse_event(text)
  local e = split(text, ' ')
  local ev = { kind = e[1] }
  if ev.kind == 'B' then
    ev.codes = e[2] or ''
    if #e ~= 2 or #ev.codes < 1 or #ev.codes > 4096 or string.find(ev.codes, '[^0-3]') then
      return nil
    end
  elseif ev.kind == 'R' then
    ev.outcome = OUTCOMES[e[2] or '']
    ev.slow = FLAGS[e[3] or '']
    -- A probe names its half-open spell; '-' is an ordinary call.
    if e[4] ~= '-' then
      ev.spell = num(e[4])
      if ev.spell == nil then return nil end
    end
    if ev.outcome == nil or ev.slow == nil or #e ~= 4 then return nil end
  elseif not SIMPLE[ev.kind] or #e ~= 1 then
    return nil
  end
  return ev
end

-- Events already read, by their text (batches are not kept: each is new).
local EVENTS, EVENTS_KEPT = {}, 0

local function event(text)
  local ev = EVENTS[text]
  if ev then return ev end
  ev = parse_event(text)
  if ev == nil or ev.kind == 'B' then return ev end
  if EVENTS_KEPT >= 64 then EVENTS, EVENTS_KEPT = {}, 0 end
  EVENTS[text], EVENTS_KEPT = ev, EVENTS_KEPT + 1
  return ev
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The call's configuration, clock and jitter, set by each call.
local cfg, now, entropy

-- Stored texts known to take the commonest step unchanged (a plain
-- success on a closed count window full of successes), by configuration
-- text: at most 1024 kept. The step's answer for them is a function of the
-- text and the configuration alone, so a call's answer never depends on
-- this memo (which the server may drop at any time); it only skips
-- reading again what was read before.
local UNCHANGED, UNCHANGED_KEPT = {}, 0

local function unchanged(config_text, raw)
  local known = UNCHANGED[config_text]
  return known ~= nil and known[raw] == true
end

local function remember_unchanged(config_text, raw)
  if UNCHANGED_KEPT >= 1024 then UNCHANGED, UNCHANGED_KEPT = {}, 0 end
  local known = UNCHANGED[config_text]
  if known == nil then
    known = {}
    UNCHANGED[config_text] = known
  end
  known[raw], UNCHANGED_KEPT = true, UNCHANGED_KEPT + 1
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

-- A word of at most 18 digits as a number, or nil.
local function digits18(x)
  if x == nil or #x > 18 then return nil end
  return tonumber(x)
end

local function decode(raw)
  -- Ten words: the version, the phase, seven numbers and the window (one
  -- pattern: far cheaper here than splitting and checking each word).
  local phase, since, open_until, openings, consecutive, admitted, ok, fail, window =
    string.match(raw, '^b1 ([%u_]+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) ([^ ]*)')
  if phase == nil or not PHASES[phase] then return nil end
  local st = { phase = phase, since = digits18(since), open_until = digits18(open_until),
    openings = digits18(openings), consecutive = digits18(consecutive),
    admitted = digits18(admitted), ok = digits18(ok), fail = digits18(fail) }
  if st.since == nil or st.open_until == nil or st.openings == nil or st.consecutive == nil
      or st.admitted == nil or st.ok == nil or st.fail == nil then
    return nil
  end
  if st.openings > U32 or st.consecutive > U32 or st.admitted > U32 or st.ok > U32
      or st.fail > U32 then
    return nil
  end
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
    if cfg.bucket_ms <= 0 or b.start % cfg.bucket_ms ~= 0 then return false end
  end
  return true
end

local function expire(calls, at)
  if cfg.kind ~= 't' then return end
  local horizon = math.max(at - cfg.size, 0)
  while #calls.buckets > 0 and calls.buckets[1].start + cfg.bucket_ms <= horizon do
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
    local length = math.max(cfg.bucket_ms, 1)
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
    -- Mostly successes while closed: one scan finds none of the others.
    if string.find(calls.codes, '[1-3]') then
      t.failures = select(2, string.gsub(calls.codes, '[13]', ''))
      t.slow = select(2, string.gsub(calls.codes, '[23]', ''))
    end
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

-- The state a call steps, its decision and its transition.
local st, decision, transition

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

-- A batch's records while the breaker is closed (or only counting), in one
-- pass: the window's counts move as each record would move them (a count
-- window slides; a time window's records all fall in one bucket, now's or
-- the newest if the clock went back),
-- so that a batch costs its length plus the window's, not their product
-- (4096 records on a count window of 10,000 took 1.6 s one at a time). It
-- stops before a record that trips the breaker, which the per-record loop
-- takes, with the records after it. Returns how many records it took.
local function closed_batch(batch)
  local size, codes, s, n = cfg.size, nil, nil, 0
  local t
  if cfg.kind == 'c' then
    codes = st.calls.codes
    s, n = codes .. batch, #codes
    t = { calls = n, failures = 0, slow = 0 }
    if string.find(codes, '[1-3]') then
      t.failures = select(2, string.gsub(codes, '[13]', ''))
      t.slow = select(2, string.gsub(codes, '[23]', ''))
    end
  else
    t = tally(st.calls, now)
  end
  local before = { failures = t.failures, slow = t.slow }
  local u = { calls = 0, failures = 0, slow = 0 }
  local consecutive, taken = st.consecutive, 0
  for k = 1, #batch do
    local code = string.byte(batch, k) - 48
    u.calls, u.failures, u.slow = t.calls + 1, t.failures + code % 2, t.slow
    if code >= 2 then u.slow = u.slow + 1 end
    if codes and n + k > size then
      local out = string.byte(s, n + k - size) - 48
      u.calls, u.failures = size, u.failures - out % 2
      if out >= 2 then u.slow = u.slow - 1 end
    end
    local next_consecutive = 0
    if code % 2 == 1 then next_consecutive = math.min(consecutive + 1, U32) end
    -- After a record that did not trip, a plain success once the window
    -- holds enough calls cannot: it lowers or keeps every figure but the
    -- calls.
    if st.phase == 'CLOSED' and (code ~= 0 or k == 1 or t.calls < cfg.min_calls)
        and trips(next_consecutive, u) then
      break
    end
    t.calls, t.failures, t.slow = u.calls, u.failures, u.slow
    consecutive, taken = next_consecutive, k
  end
  st.consecutive = consecutive
  if codes then
    local last = n + taken
    st.calls.codes = string.sub(s, math.max(last - size + 1, 1), last)
  elseif taken > 0 then
    -- Each of them as record() adds it, at one time: in one bucket.
    local start = now - now % math.max(cfg.bucket_ms, 1)
    local buckets = st.calls.buckets
    local last = buckets[#buckets]
    if last == nil or last.start < start then
      last = { start = start, calls = 0, failures = 0, slow = 0 }
      buckets[#buckets + 1] = last
    end
    last.calls = last.calls + taken
    last.failures = last.failures + t.failures - before.failures
    last.slow = last.slow + t.slow - before.slow
  end
  return taken
end

-- The step.
local function run(keys, args)
  local key, input = keys[1], args[1]
  if input == '?' then return redis.call('GET', key) or '' end
  if input == '?t' then
    return string.format('%d', server_ms()) .. ' ' .. (redis.call('GET', key) or '')
  end

  -- Six fields; the name, last, may itself hold '|' (and is not read here).
  local config_text, event_text, entropy_text, now_text, ttl_text =
    string.match(input, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  if config_text == nil then return bad() end
  cfg = config(config_text)
  if cfg == nil then return bad() end
  local ev = event(event_text)
  if ev == nil then return bad() end
  local ttl
  entropy, now, ttl = num(entropy_text), num(now_text), num(ttl_text)
  if entropy == nil or entropy > U32 or now == nil or ttl == nil then return bad() end

  local raw = redis.call('GET', key)
  local plain = ev.outcome == 'success' and not ev.slow and ev.kind == 'R'
  if plain and raw and unchanged(config_text, raw) then return 'D -' end
  if now == 0 then now = server_ms() end
  local baseline
  if raw then
    baseline = raw
    st = decode(raw) or fresh(now)
  else
    baseline = encode(fresh(now))
    st = fresh(now)
  end
  if not fits(st.calls) then st.calls = empty() end

  -- The commonest step changes nothing: a plain success on a closed count
  -- window full of successes (the window, the failures in a row and every
  -- rate stay as they are; nothing can trip). A stored text that is not
  -- written as encode writes it takes the full step, which rewrites it.
  if plain and st.phase == 'CLOSED'
      and st.consecutive == 0 and cfg.kind == 'c' and #st.calls.codes == cfg.size
      and not string.find(st.calls.codes, '[1-3]') and raw == encode(st) then
    remember_unchanged(config_text, raw)
    return 'D -'
  end

  decision, transition = 'D', nil
  if MANUAL[ev.kind] then
    transition = enter(st, MANUAL[ev.kind], now)
  elseif ev.kind == 'B' then
    local from = 1
    if st.phase == 'CLOSED' or st.phase == 'METRICS_ONLY' then
      from = closed_batch(ev.codes) + 1
    end
    for i = from, #ev.codes do
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
      redis.call('SET', key, encoded)
    else
      redis.call('SET', key, encoded, 'PX', math.max(ttl, 1))
    end
  end
  local moved = '-'
  if transition ~= nil then moved = transition.from .. '>' .. transition.to end
  return decision .. ' ' .. moved
end

return run
