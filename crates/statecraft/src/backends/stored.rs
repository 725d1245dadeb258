//! The stored form the embedded stores (sled, redb) share: each value
//! carries a small header — one tag byte, then (for values with a TTL) the
//! absolute expiry as 8 big-endian bytes of Unix milliseconds — and the
//! expiry index keys each expiring value by `expiry ++ key`, so that what
//! is due comes out of one range scan.

use crate::backend::error::{Error, ErrorKind, Result};

const TAG_PLAIN: u8 = 0;
const TAG_EXPIRING: u8 = 1;

/// A decoded stored value: its expiry (0 for never) and where the payload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) expires_at: u64,
    pub(crate) len: usize,
}

impl Header {
    /// Whether a value with this header is still live at `now`.
    pub(crate) fn live_at(self, now: u64) -> bool {
        self.expires_at == 0 || now < self.expires_at
    }
}

/// The header of the stored value `raw`; a value without one is
/// [`Corrupt`](ErrorKind::Corrupt) (of `backend`).
pub(crate) fn decode_header(raw: &[u8], backend: &'static str) -> Result<Header> {
    match raw.first() {
        Some(&TAG_PLAIN) => Ok(Header {
            expires_at: 0,
            len: 1,
        }),
        Some(&TAG_EXPIRING) if raw.len() >= 9 => {
            let mut at = [0u8; 8];
            at.copy_from_slice(&raw[1..9]);
            Ok(Header {
                expires_at: u64::from_be_bytes(at),
                len: 9,
            })
        }
        _ => Err(Error::new(
            ErrorKind::Corrupt,
            "a stored value has no statecraft header (was the database written by something else?)",
        )
        .with_backend(backend)),
    }
}

/// `value` with its header, expiring at `expires_at` (0: never).
pub(crate) fn encode_value(value: &[u8], expires_at: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(value.len() + 9);
    if expires_at == 0 {
        raw.push(TAG_PLAIN);
    } else {
        raw.push(TAG_EXPIRING);
        raw.extend_from_slice(&expires_at.to_be_bytes());
    }
    raw.extend_from_slice(value);
    raw
}

/// The expiry index's key of `key` expiring at `expires_at`.
pub(crate) fn index_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut index = Vec::with_capacity(8 + key.len());
    index.extend_from_slice(&expires_at.to_be_bytes());
    index.extend_from_slice(key);
    index
}

/// The expiry and the key of the index entry `index` (`None`: not an
/// index key).
pub(crate) fn split_index_key(index: &[u8]) -> Option<(u64, &[u8])> {
    let (at, key) = index.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*at), key))
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_with_its_expiry() {
        for (value, at) in [(&b""[..], 0), (b"v", 0), (b"payload", 42), (b"", u64::MAX)] {
            let raw = encode_value(value, at);
            let header = decode_header(&raw, "test").expect("a header");
            assert_eq!(header.expires_at, at);
            assert_eq!(&raw[header.len..], value);
        }
        assert!(decode_header(b"", "test").is_err());
        assert!(decode_header(&[TAG_EXPIRING, 0, 0], "test").is_err());
        assert!(decode_header(&[7, 1], "test").is_err());
    }

    #[test]
    fn index_keys_order_by_expiry_then_key() {
        let early = index_key(5, b"zz");
        let late = index_key(6, b"aa");
        assert!(early < late);
        assert_eq!(split_index_key(&late), Some((6, &b"aa"[..])));
        assert_eq!(split_index_key(b"short"), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
