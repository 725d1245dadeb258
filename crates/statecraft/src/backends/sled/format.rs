//! The stored value format: a tag byte, then (for values with a TTL) the
//! expiry, then the payload.

use bytes::Bytes;
use sled::IVec;

use crate::backend::error::{Error, ErrorKind, Result};

use super::NAME;

const TAG_PLAIN: u8 = 0;
const TAG_EXPIRING: u8 = 1;

/// A decoded stored value: its expiry (0 for never) and where the payload starts.
#[derive(Clone, Copy)]
pub(super) struct Header {
    pub(super) expires_at: u64,
    pub(super) len: usize,
}

pub(super) fn decode_header(raw: &[u8]) -> Result<Header> {
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
            "a stored value has no statecraft header (was the tree written by something else?)",
        )
        .with_backend(NAME)),
    }
}

pub(super) fn encode_value(value: &[u8], expires_at: u64) -> Vec<u8> {
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

pub(super) fn payload(raw: IVec, header: Header) -> Bytes {
    Bytes::from_owner(raw).slice(header.len..)
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
