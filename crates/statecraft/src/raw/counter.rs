//! The counter format `increment` reads and writes.

use crate::backend::error::{Error, ErrorKind, Operation, Result};

/// Parses a stored counter and adds `delta` to it, as `increment` specifies.
pub fn apply_increment(raw: &[u8], delta: i64) -> Result<i64> {
    let current = parse_counter(raw)?;
    current.checked_add(delta).ok_or_else(|| {
        Error::new(
            ErrorKind::Overflow,
            format!("{current} + {delta} overflows a 64-bit integer"),
        )
        .with_operation(Operation::Increment)
    })
}

/// Parses a decimal ASCII signed 64-bit integer as `increment` stores it:
/// an optional `-` and digits, without a `+`, spaces or leading zeros (so
/// `"007"` and `"-0"` are not counters), exactly as Redis reads them.
pub fn parse_counter(raw: &[u8]) -> Result<i64> {
    let canonical = |text: &&str| {
        let digits = text.strip_prefix('-').unwrap_or(text);
        !text.starts_with('+') && (*text == "0" || !digits.starts_with('0'))
    };
    std::str::from_utf8(raw)
        .ok()
        .filter(canonical)
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotAnInteger,
                "the stored value is not a decimal 64-bit integer",
            )
            .with_operation(Operation::Increment)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_strictly() {
        assert_eq!(parse_counter(b"-12").ok(), Some(-12));
        assert_eq!(parse_counter(b"0").ok(), Some(0));
        for bad in [
            &b""[..],
            b"+1",
            b" 1",
            b"1.5",
            b"abc",
            b"\xff",
            b"99999999999999999999",
            b"007",
            b"-0",
            b"-",
        ] {
            let err = parse_counter(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::NotAnInteger), "{bad:?}");
        }
        let err = apply_increment(i64::MAX.to_string().as_bytes(), 1).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Overflow));
    }
}
