//! [`BoundedCounter`]: a small [`AtomicUpdate`] with a Redis copy, for the
//! conformance cases and the differential test of the native paths.

use std::time::Duration;

use bytes::Bytes;
use statecraft::{AtomicStep, AtomicUpdate, AtomicWrite, Error, ErrorKind, PutOptions, Result};

/// Counts admissions up to a limit: the input is the limit in decimal (or
/// `reset`, which deletes the key); below the limit the count goes up by
/// one (with a 60 s TTL) and the output is `admitted <n>`, at it nothing is
/// written and the output is `denied <n>`. A limit or a stored count that
/// is not a decimal integer is an `InvalidArgument` error.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundedCounter;

/// The TTL a counted key gets.
pub const BOUNDED_COUNTER_TTL: Duration = Duration::from_secs(60);

fn invalid(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!("bounded counter: bad {what}"),
    )
}

fn decimal(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) || raw.len() > 15 {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

const SCRIPT: &str = r#"
local input = ARGV[1]
if input == 'reset' then
  redis.call('DEL', KEYS[1])
  return 'reset'
end
if not string.match(input, '^%d+$') or #input > 15 then
  return redis.error_reply('statecraft:invalid_argument limit')
end
local limit = tonumber(input)
local raw = redis.call('GET', KEYS[1])
local n = 0
if raw then
  if not string.match(raw, '^%d+$') or #raw > 15 then
    return redis.error_reply('statecraft:invalid_argument stored count')
  end
  n = tonumber(raw)
end
if n < limit then
  redis.call('SET', KEYS[1], string.format('%d', n + 1), 'PX', 60000)
  return 'admitted ' .. string.format('%d', n + 1)
end
return 'denied ' .. string.format('%d', n)
"#;

impl AtomicUpdate for BoundedCounter {
    fn name(&self) -> &'static str {
        "bounded_counter"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], _now_micros: u64) -> Result<AtomicStep> {
        if input == b"reset" {
            return Ok(AtomicStep {
                write: AtomicWrite::Delete,
                output: Bytes::from_static(b"reset"),
            });
        }
        let limit = decimal(input).ok_or_else(|| invalid("limit"))?;
        let n = match current {
            None => 0,
            Some(raw) => decimal(raw).ok_or_else(|| invalid("stored count"))?,
        };
        if n < limit {
            return Ok(AtomicStep {
                write: AtomicWrite::Put {
                    value: Bytes::from((n + 1).to_string()),
                    options: PutOptions::new().ttl(BOUNDED_COUNTER_TTL),
                },
                output: Bytes::from(format!("admitted {}", n + 1)),
            });
        }
        Ok(AtomicStep {
            write: AtomicWrite::Keep,
            output: Bytes::from(format!("denied {n}")),
        })
    }

    fn redis_script(&self) -> Option<&'static str> {
        Some(SCRIPT)
    }
}
