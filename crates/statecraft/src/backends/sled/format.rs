//! The stored value format (shared with redb: [`stored`](crate::backends::stored)),
//! read out of sled's buffers.

use bytes::Bytes;
use sled::IVec;

use crate::backend::error::Result;

pub(super) use crate::backends::stored::{encode_value, index_key, prefix_end, Header};

use super::NAME;

pub(super) fn decode_header(raw: &[u8]) -> Result<Header> {
    crate::backends::stored::decode_header(raw, NAME)
}

pub(super) fn payload(raw: IVec, header: Header) -> Bytes {
    Bytes::from_owner(raw).slice(header.len..)
}
