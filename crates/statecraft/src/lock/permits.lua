-- statecraft: the semaphore's step, a copy of lock::permits's
-- semaphore_step in Lua (input, state and output as lock::permits writes
-- them), checked against the Rust step by tests/lock_native.rs. keys[1]:
-- the semaphore's key; args[1]: 'a <owner> <permits> <lease us> <now us>',
-- 'e <owner> <lease us> <now us>' or 'r <owner> <now us>' (now 0: the
-- server's clock), or '?' (the server's time and the holders). Every
-- figure has at most 16 digits.

local MAX_LEASE = 31622400000000 -- 366 days, in us
local MAX_PERMITS = 4096
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

-- The holders a stored text lists, as { owner, expires } pairs (a text
-- the step does not write counts as none).
local function decode(raw)
  if not raw then return {} end
  local w = words(raw)
  if not w or w[1] ~= 'm' or #w % 2 ~= 1 or #w > 1 + 2 * MAX_PERMITS then return {} end
  local held = {}
  for i = 2, #w, 2 do
    local o, e = owner(w[i]), num(w[i + 1])
    if not (o and e) then return {} end
    held[#held + 1] = { o, e }
  end
  return held
end

local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function encode(held)
  local text = 'm'
  for _, h in ipairs(held) do text = text .. ' ' .. h[1] .. ' ' .. fmt(h[2]) end
  return text
end

local function run(keys, args)
  local key = keys[1]
  if args[1] == '?' then
    local held = decode(redis.call('GET', key) or nil)
    local text = ''
    if #held > 0 then text = encode(held) end
    return fmt(server_us()) .. ' ' .. text
  end
  local w = words(args[1] or '')
  if not w then return bad() end
  local op, who, permits, ls, now = w[1], nil, nil, nil, nil
  if op == 'a' and #w == 5 then
    who, permits, ls, now = owner(w[2]), num(w[3]), lease(w[4]), num(w[5])
    if not (who and permits and ls and now) or permits < 1 or permits > MAX_PERMITS then
      return bad()
    end
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

  local live, mine = {}, nil
  for _, h in ipairs(decode(redis.call('GET', key) or nil)) do
    if h[2] > now then
      live[#live + 1] = h
      if h[1] == who and not mine then mine = #live end
    end
  end
  local function store()
    if #live == 0 then
      redis.call('DEL', key)
      return
    end
    local last = now
    for _, h in ipairs(live) do
      if h[2] > last then last = h[2] end
    end
    redis.call('SET', key, encode(live), 'PX', fmt(math.ceil((last - now + LINGER) / 1000)))
  end
  if op == 'a' or op == 'e' then
    if mine then
      live[mine][2] = now + ls
    elseif op == 'a' and #live < permits then
      live[#live + 1] = { who, now + ls }
    elseif op == 'a' then
      local soonest = now
      for i, h in ipairs(live) do
        if i == 1 or h[2] < soonest then soonest = h[2] end
      end
      return 'B ' .. fmt(#live) .. ' ' .. fmt(soonest - now)
    else
      return 'N'
    end
    store()
    return 'H ' .. fmt(#live) .. ' ' .. fmt(ls)
  end
  if not mine then return 'N' end
  table.remove(live, mine)
  store()
  return 'R ' .. fmt(#live)
end

return run
