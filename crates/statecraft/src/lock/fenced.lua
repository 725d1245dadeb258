-- statecraft: the fenced write, a copy of lock::fenced::FencedWrite in Lua,
-- checked against the Rust step by tests/lock_native.rs. keys[1]: the
-- key; args[1]: '<token> <value>' (the value any bytes). Stored only if the
-- token is at least the one the stored value carries (none: 0); answers
-- 'W' (written) or 'S <highest>'.

local function token_of(text)
  if not text then return nil end
  local space = string.find(text, ' ', 1, true)
  if not space or space == 1 or space > 17 then return nil end
  local digits = string.sub(text, 1, space - 1)
  if not string.match(digits, '^%d+$') then return nil end
  -- Below 2^53 (a double holds it exactly), or none.
  local token = tonumber(digits)
  if token >= 9007199254740992 then return nil end
  return token
end

local function run(keys, args)
  local input = args[1] or ''
  local token = token_of(input)
  if not token then
    return redis.error_reply('statecraft:invalid_argument fenced write: the input is not `<token> <value>`')
  end
  local highest = token_of(redis.call('GET', keys[1]) or nil) or 0
  if token < highest then return 'S ' .. string.format('%d', highest) end
  redis.call('SET', keys[1], input)
  return 'W'
end

return run
