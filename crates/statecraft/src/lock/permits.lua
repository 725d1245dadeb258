-- statecraft: the semaphore's step, a copy of lock::permits's
-- semaphore_step in Lua (input, state and output as lock::permits writes
-- them), checked against the Rust step by tests/lock_native.rs. keys[1]:
-- the semaphore's key; args[1]: 'a <owner> <permits> <lease us> <now us>',
-- 'w <owner> <permits> <lease us> <line us> <now us>', 'l <owner> <now
-- us>', 'e <owner> <lease us> <now us>' or 'r <owner> <now us>' (now 0:
-- the server's clock), or '?' (the server's time and the state). The
-- state is 'm', '<owner> <expires>' per holder, then (someone waiting)
-- 'w' and '<owner> <place until>' per waiter, first first. A free permit
-- goes to an asker only if more are free than waiters stand before it.
-- Every figure has at most 16 digits.

local MAX_LEASE = 31622400000000 -- 366 days, in us
local MAX_PERMITS = 4096
local MAX_LINE = 32
local LINGER = 60000000 -- us a key outlives its last lease
-- (Spelled out: a library's top level runs before `string` is there.)
local OWNER = '^' .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$'

local function bad()
  return redis.error_reply('statecraft:invalid_argument semaphore step: malformed input')
end

local function fmt(n) return string.format('%d', n) end

local function num(x)
  if x == nil or #x == 0 or #x > 16 or not string.match(x, '^%d+$') then return nil end
  return tonumber(x)
end

local function owner(x)
  if x == nil or not string.match(x, OWNER) then return nil end
  return x
end

local function lease(x)
  local n = num(x)
  if n == nil or n < 1 or n > MAX_LEASE then return nil end
  return n
end

-- Words split on single spaces (nil: a doubled, leading or trailing one).
local function words(s)
  if string.find(s, '  ', 1, true) or string.sub(s, 1, 1) == ' ' or string.sub(s, -1) == ' ' then
    return nil
  end
  local out = {}
  for w in string.gmatch(s, '[^ ]+') do out[#out + 1] = w end
  return out
end

-- The holders and the line a stored text lists, each as { owner, until }
-- pairs (a text the step does not write counts as none of either).
local function decode(raw)
  if not raw then return {}, {} end
  local w = words(raw)
  if not w or w[1] ~= 'm' then return {}, {} end
  local sep = nil
  for i = 2, #w do
    if w[i] == 'w' then sep = i break end
  end
  local function pairs_of(from, to, most)
    local out = {}
    if (to - from + 1) % 2 ~= 0 or to - from + 1 > 2 * most then return nil end
    for i = from, to, 2 do
      local o, e = owner(w[i]), num(w[i + 1])
      if not (o and e) then return nil end
      out[#out + 1] = { o, e }
    end
    return out
  end
  local held, line
  if sep then
    held, line = pairs_of(2, sep - 1, MAX_PERMITS), pairs_of(sep + 1, #w, MAX_LINE)
    if line and #line == 0 then line = nil end
  else
    held, line = pairs_of(2, #w, MAX_PERMITS), {}
  end
  if not (held and line) then return {}, {} end
  return held, line
end

local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function encode(held, line)
  local text = 'm'
  for _, h in ipairs(held) do text = text .. ' ' .. h[1] .. ' ' .. fmt(h[2]) end
  if #line > 0 then
    text = text .. ' w'
    for _, v in ipairs(line) do text = text .. ' ' .. v[1] .. ' ' .. fmt(v[2]) end
  end
  return text
end

local function run(keys, args)
  local key = keys[1]
  if args[1] == '?' then
    local held, line = decode(redis.call('GET', key) or nil)
    local text = ''
    if #held > 0 or #line > 0 then text = encode(held, line) end
    return fmt(server_us()) .. ' ' .. text
  end
  local w = words(args[1] or '')
  if not w then return bad() end
  local op, who, permits, ls, line_us, now = w[1], nil, nil, nil, nil, nil
  if op == 'a' and #w == 5 then
    who, permits, ls, now = owner(w[2]), num(w[3]), lease(w[4]), num(w[5])
    if not (who and permits and ls and now) or permits < 1 or permits > MAX_PERMITS then
      return bad()
    end
  elseif op == 'w' and #w == 6 then
    who, permits, ls, line_us, now = owner(w[2]), num(w[3]), lease(w[4]), lease(w[5]), num(w[6])
    if not (who and permits and ls and line_us and now) or permits < 1 or permits > MAX_PERMITS then
      return bad()
    end
  elseif op == 'l' and #w == 3 then
    who, now = owner(w[2]), num(w[3])
    if not (who and now) then return bad() end
  elseif op == 'e' and #w == 4 then
    who, ls, now = owner(w[2]), lease(w[3]), num(w[4])
    if not (who and ls and now) then return bad() end
  elseif op == 'r' and #w == 3 then
    who, now = owner(w[2]), num(w[3])
    if not (who and now) then return bad() end
  else
    return bad()
  end
  if now == 0 then now = server_us() end

  local stored_held, stored_line = decode(redis.call('GET', key) or nil)
  local live, line, mine, place = {}, {}, nil, nil
  for _, h in ipairs(stored_held) do
    if h[2] > now then
      live[#live + 1] = h
      if h[1] == who and not mine then mine = #live end
    end
  end
  for _, v in ipairs(stored_line) do
    if v[2] > now then
      line[#line + 1] = v
      if v[1] == who and not place then place = #line end
    end
  end
  local function without_me(list)
    local out = {}
    for _, v in ipairs(list) do
      if v[1] ~= who then out[#out + 1] = v end
    end
    return out
  end
  local function store()
    if #live == 0 and #line == 0 then
      redis.call('DEL', key)
      return
    end
    local last = now
    for _, h in ipairs(live) do
      if h[2] > last then last = h[2] end
    end
    for _, v in ipairs(line) do
      if v[2] > last then last = v[2] end
    end
    redis.call('SET', key, encode(live, line), 'PX', fmt(math.ceil((last - now + LINGER) / 1000)))
  end
  if op == 'a' or op == 'w' then
    if mine then
      live[mine][2] = now + ls
      line = without_me(line)
      store()
      return 'H ' .. fmt(#live) .. ' ' .. fmt(ls)
    end
    local free = permits - #live
    if free < 0 then free = 0 end
    local ahead = #line
    if place then ahead = place - 1 end
    if free > ahead then
      live[#live + 1] = { who, now + ls }
      line = without_me(line)
      store()
      return 'H ' .. fmt(#live) .. ' ' .. fmt(ls)
    end
    -- The soonest a permit may free up for it: a lease that ends (none
    -- free), or a place before it that lapses.
    local soonest = nil
    if free == 0 then
      for _, h in ipairs(live) do
        if not soonest or h[2] < soonest then soonest = h[2] end
      end
    else
      for i = 1, ahead do
        if not soonest or line[i][2] < soonest then soonest = line[i][2] end
      end
    end
    if not soonest then soonest = now + 1 end
    local busy = 'B ' .. fmt(#live) .. ' ' .. fmt(soonest - now)
    if op == 'a' then return busy end
    if place then
      -- A place with more than half its time left stays as it is.
      if line[place][2] - now > math.floor(line_us / 2) then return busy end
      line[place][2] = now + line_us
    elseif #line < MAX_LINE then
      line[#line + 1] = { who, now + line_us }
    else
      return busy
    end
    store()
    return busy
  end
  if op == 'l' then
    local before = #line
    line = without_me(line)
    if mine then
      table.remove(live, mine)
      store()
      return 'R ' .. fmt(#live)
    end
    if #line < before then store() end
    return 'L'
  end
  if op == 'e' then
    if not mine then return 'N' end
    live[mine][2] = now + ls
    store()
    return 'H ' .. fmt(#live) .. ' ' .. fmt(ls)
  end
  if not mine then return 'N' end
  table.remove(live, mine)
  store()
  return 'R ' .. fmt(#live)
end

return run
