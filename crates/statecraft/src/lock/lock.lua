-- statecraft: the lock's step, a copy of lock::machine::lock_step in Lua
-- (input, state and output as lock::shared writes them), checked against
-- the Rust function by tests/lock_native.rs. The chunk returns the step as
-- a function of (keys, args): the Redis backend loads it once as a Redis
-- Function library, or runs it per call by EVALSHA on servers without
-- functions. keys[1]: the lock's key; args[1]: 'a <owner> <lease us> <now
-- us>', 'w <owner> <lease us> <line us> <now us>', 'l <owner> <now us>',
-- 'e <owner> <token> <lease us> <now us>', 'r <owner> <token> <now us>'
-- (now 0: the server's clock), or '?' (the server's time and the state).
-- The state is 'h <owner> <token> <expires>' or 'f <last token>', then
-- ' <owner> <until>' per waiter in the line, first first. Every figure is
-- read only up to 16 digits; those the step writes (times and leases in
-- µs, and their sums) stay below 2^53, where Lua's doubles compute exactly
-- what the Rust integers do (a hand-made figure between 2^53 and 10^16
-- would be rounded here, not in Rust).

local RETAIN = 3600000000 -- us a key outlives a lease or a release
local MAX_LEASE = 31622400000000 -- 366 days, in us
local MAX_LINE = 32 -- waiters a line keeps
local function bad()
  return redis.error_reply('statecraft:invalid_argument lock step: malformed input')
end

local function fmt(n) return string.format('%d', n) end

-- Figures and owners as the patterns below capture them: a figure is a
-- run of digits ('%d+'), kept to 16 of them; an owner a run of lowercase
-- hex digits ('[0-9a-f]+'), kept to 32 of them.
local function num(x)
  if x == nil or #x > 16 then return nil end
  return tonumber(x)
end

local function owner(x)
  if x == nil or #x ~= 32 then return nil end
  return x
end

local function lease(x)
  local n = num(x)
  if n == nil or n < 1 or n > MAX_LEASE then return nil end
  return n
end

-- The stored record as { kind, owner, token, expires, line } ('h') or
-- { kind, nil, last token, nil, line } ('f'), the line a list of
-- { owner, until }; nil: none, or a text the step does not write (counted
-- as no lock).
local function decode(raw)
  if not raw then return nil end
  local st, rest
  local kind = string.sub(raw, 1, 1)
  if kind == 'h' then
    local o, t, e, r = string.match(raw, '^h ([0-9a-f]+) (%d+) (%d+)(.*)$')
    o, t, e = owner(o), num(t), num(e)
    if not (o and t and e) then return nil end
    st, rest = { 'h', o, t, e, {} }, r
  elseif kind == 'f' then
    local t, r = string.match(raw, '^f (%d+)(.*)$')
    t = num(t)
    if not t then return nil end
    st, rest = { 'f', nil, t, nil, {} }, r
  else
    return nil
  end
  -- The line: ' <owner> <until>' per waiter, nothing else.
  local at, line = 1, st[5]
  while at <= #rest do
    local o, u, after = string.match(rest, '^ ([0-9a-f]+) (%d+)()', at)
    o, u = owner(o), num(u)
    if not (o and u) or #line >= MAX_LINE then return nil end
    line[#line + 1] = { o, u }
    at = after
  end
  return st
end

local function encode(st)
  local out
  if st[1] == 'h' then
    out = 'h ' .. st[2] .. ' ' .. fmt(st[3]) .. ' ' .. fmt(st[4])
  else
    out = 'f ' .. fmt(st[3])
  end
  for _, v in ipairs(st[5]) do out = out .. ' ' .. v[1] .. ' ' .. fmt(v[2]) end
  return out
end

local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function px(ttl) return fmt(math.max(math.ceil(ttl / 1000), 1)) end

-- The uncontended steps, without a line: what the whole step below does
-- for an acquisition of a free lock whose stored text has no waiter, and
-- for its holder's release; nil for any other case (the whole step then
-- decides). Their stored texts are those `encode` writes.
local function acquire_free(key, raw, who, ls, now)
  local last = 0
  if raw then
    local t = string.match(raw, '^f (%d+)$')
    if t == nil then
      local o, e
      o, t, e = string.match(raw, '^h ([0-9a-f]+) (%d+) (%d+)$')
      o, e = owner(o), num(e)
      if not (o and e) or e > now then return nil end
    end
    last = num(t)
    if last == nil then return nil end
  end
  local t = math.max(last + 1, now)
  redis.call('SET', key, 'h ' .. who .. ' ' .. fmt(t) .. ' ' .. fmt(now + ls), 'PX', px(ls + RETAIN))
  return 'H ' .. fmt(t) .. ' ' .. fmt(ls)
end

local function release_alone(key, raw, who, token)
  if not raw then return nil end
  local o, t, e = string.match(raw, '^h ([0-9a-f]+) (%d+) (%d+)$')
  if o ~= who or num(t) ~= token or num(e) == nil then return nil end
  redis.call('SET', key, 'f ' .. fmt(token), 'PX', px(RETAIN))
  return 'R ' .. fmt(token)
end

local function run(keys, args)
  local key, input = keys[1], args[1] or ''
  if input == '?' then
    local st = decode(redis.call('GET', key) or nil)
    local text = ''
    if st then text = encode(st) end
    return fmt(server_us()) .. ' ' .. text
  end
  local op, who, token, ls, line_us, now = string.sub(input, 1, 1), nil, nil, nil, nil, nil
  if op == 'a' then
    who, ls, now = string.match(input, '^a ([0-9a-f]+) (%d+) (%d+)$')
    who, ls, now = owner(who), lease(ls), num(now)
    if not (who and ls and now) then return bad() end
  elseif op == 'w' then
    who, ls, line_us, now = string.match(input, '^w ([0-9a-f]+) (%d+) (%d+) (%d+)$')
    who, ls, line_us, now = owner(who), lease(ls), lease(line_us), num(now)
    if not (who and ls and line_us and now) then return bad() end
  elseif op == 'l' then
    who, now = string.match(input, '^l ([0-9a-f]+) (%d+)$')
    who, now = owner(who), num(now)
    if not (who and now) then return bad() end
  elseif op == 'e' then
    who, token, ls, now = string.match(input, '^e ([0-9a-f]+) (%d+) (%d+) (%d+)$')
    who, token, ls, now = owner(who), num(token), lease(ls), num(now)
    if not (who and token and ls and now) then return bad() end
  elseif op == 'r' then
    who, token, now = string.match(input, '^r ([0-9a-f]+) (%d+) (%d+)$')
    who, token, now = owner(who), num(token), num(now)
    if not (who and token and now) then return bad() end
  else
    return bad()
  end
  if now == 0 then now = server_us() end

  local raw = redis.call('GET', key) or nil
  local fast
  if op == 'a' or op == 'w' then
    fast = acquire_free(key, raw, who, ls, now)
  elseif op == 'r' then
    fast = release_alone(key, raw, who, token)
  end
  if fast then return fast end
  local st = decode(raw)
  -- The holder while its lease runs.
  local held = st and st[1] == 'h' and st[4] > now
  -- The places still kept, `except`'s taken out, and whether `who` has one.
  local function line_without(except)
    local out, found = {}, false
    if st then
      for _, v in ipairs(st[5]) do
        if v[2] > now then
          if v[1] == who then found = true end
          if v[1] ~= except then out[#out + 1] = v end
        end
      end
    end
    return out, found
  end
  local function write(rec)
    local left = 0
    if rec[1] == 'h' and rec[4] > now then left = rec[4] - now end
    redis.call('SET', key, encode(rec), 'PX', px(left + RETAIN))
  end
  local function hold(t, l)
    write({ 'h', who, t, now + l, (line_without(who)) })
    return 'H ' .. fmt(t) .. ' ' .. fmt(l)
  end
  if op == 'a' or op == 'w' then
    if held and st[2] == who then return hold(st[3], ls) end
    local busy
    if held then
      busy = 'B ' .. fmt(st[3]) .. ' ' .. fmt(st[4] - now)
    else
      local live = line_without(nil)
      local last = 0
      if st then last = st[3] end
      if #live == 0 or live[1][1] == who then return hold(math.max(last + 1, now), ls) end
      busy = 'B ' .. fmt(last) .. ' ' .. fmt(live[1][2] - now)
    end
    if op == 'a' then return busy end
    local line = line_without(nil)
    local placed = false
    for _, v in ipairs(line) do
      if v[1] == who then
        -- A place with more than half its time left stays as it is.
        if v[2] - now > math.floor(line_us / 2) then return busy end
        v[2] = now + line_us
        placed = true
      end
    end
    if not placed then
      if #line >= MAX_LINE then return busy end
      line[#line + 1] = { who, now + line_us }
    end
    st[5] = line
    write(st)
    return busy
  elseif op == 'l' then
    local line, found = line_without(who)
    -- Its own holding (an ask granted unanswered) given back.
    if st and st[1] == 'h' and st[2] == who then
      write({ 'f', nil, st[3], nil, line })
      if #line > 0 then return 'R ' .. fmt(st[3]) .. ' ' .. line[1][1] end
      return 'R ' .. fmt(st[3])
    end
    if not found then return 'L' end
    st[5] = line
    write(st)
    if #line > 0 and not held then return 'L ' .. line[1][1] end
    return 'L'
  elseif op == 'e' then
    if held and st[2] == who and st[3] == token then return hold(token, ls) end
    return 'N'
  end
  if st and st[1] == 'h' and st[2] == who and st[3] == token then
    local line = line_without(nil)
    write({ 'f', nil, token, nil, line })
    if #line > 0 then return 'R ' .. fmt(token) .. ' ' .. line[1][1] end
    return 'R ' .. fmt(token)
  end
  return 'N'
end

return run
