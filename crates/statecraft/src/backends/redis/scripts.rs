//! The server-side Lua scripts, called by SHA (loaded again on `NOSCRIPT`).

/// Compare-and-swap on one key. ARGV: expected-present flag, expected,
/// new-present flag, new, TTL in ms (0: none). Returns `{1}` when swapped,
/// `{0}` or `{0, current}` on conflict.
pub(super) const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then
    if cur then return {0, cur} end
    return {0}
  end
elseif cur then
  return {0, cur}
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return {1}
";

/// The value of a key with its PTTL, atomically: `false` (nil) when
/// absent, `{value, pttl}` otherwise.
pub(super) const GET_WITH_TTL_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
";

/// Increment with a TTL set only when the key is created. The result is
/// read back as a string: Lua numbers are doubles and would round it.
pub(super) const INCREMENT_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
";
