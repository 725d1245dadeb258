//! The shared state behind a [`SledBackend`](super::SledBackend), and its
//! reads and writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sled::transaction::{abort, Transactional as _, TransactionalTree};
use sled::{IVec, Tree};

use crate::backend::clock::{expiry_after, Clock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;
use crate::backend::options::{CasOutcome, KeyPage, KeyTtl, PutOptions};
use crate::raw::counter::apply_increment;
use crate::raw::recorder::StatsRecorder;

use super::errors::{sled_error, tx_result};
use super::format::{decode_header, encode_value, index_key, payload, prefix_end, Header};
use super::NAME;

pub(super) struct Inner {
    pub(super) db: sled::Db,
    pub(super) data: Tree,
    pub(super) expiry: Tree,
    pub(super) path: PathBuf,
    pub(super) default_ttl: Option<Duration>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) limits: Limits,
    pub(super) stats: StatsRecorder,
}

impl Inner {
    pub(super) fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    /// The expiry time `options` give a value written now (0: never).
    pub(super) fn expiry(&self, options: PutOptions) -> u64 {
        match options.resolve_ttl(self.default_ttl) {
            Some(ttl) => expiry_after(self.now(), ttl),
            None => 0,
        }
    }

    /// The raw stored value of `key` if it is live, with its header.
    pub(super) fn live_raw(&self, key: &[u8], op: Operation) -> Result<Option<(IVec, Header)>> {
        let Some(raw) = self.data.get(key).map_err(|e| sled_error(e, op))? else {
            return Ok(None);
        };
        let header = decode_header(&raw).map_err(|e| e.with_key(key).context(NAME, op))?;
        if header.expires_at != 0 && header.expires_at <= self.now() {
            // Expired: drop it unless someone rewrote it meanwhile.
            let _ = self
                .data
                .compare_and_swap(key, Some(&raw), None as Option<&[u8]>);
            return Ok(None);
        }
        Ok(Some((raw, header)))
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(NAME, Operation::Get, key)?;
        Ok(self
            .live_raw(key, Operation::Get)?
            .map(|(raw, header)| payload(raw, header)))
    }

    /// Reads the live value of `key`, lets `decide` choose what to store,
    /// and stores it.
    ///
    /// A write that keeps the key's expiry (none before and after, or the
    /// same instant: an increment keeps its TTL) leaves the expiry index
    /// as it is, so one compare-and-swap of the value does it, decided
    /// again if the value changed meanwhile. Any other goes through
    /// [`update_indexed`](Self::update_indexed).
    fn update<R>(
        &self,
        key: &[u8],
        op: Operation,
        decide: impl Fn(Option<(&[u8], u64)>) -> Result<Decision<R>>,
    ) -> Result<R> {
        loop {
            let now = self.now();
            let raw = self.data.get(key).map_err(|e| sled_error(e, op))?;
            let header = match raw.as_deref().map(decode_header) {
                None => None,
                Some(Ok(header)) => Some(header),
                Some(Err(err)) => return Err(err.with_key(key).context(NAME, op)),
            };
            let live = match (&raw, header) {
                (Some(raw), Some(h)) if h.live_at(now) => Some((&raw[h.len..], h.expires_at)),
                _ => None,
            };
            let (value, expires_at, result) = match decide(live)? {
                Decision::Keep(result) => return Ok(result),
                Decision::Write {
                    value,
                    expires_at,
                    result,
                } => (value, expires_at, result),
            };
            let old_expiry = header.map_or(0, |h| h.expires_at);
            let new_expiry = if value.is_some() { expires_at } else { 0 };
            if new_expiry != old_expiry {
                return self.update_indexed(key, op, decide);
            }
            let stored = value.map(|value| encode_value(&value, expires_at));
            match self
                .data
                .compare_and_swap(key, raw.as_ref(), stored)
                .map_err(|e| sled_error(e, op))?
            {
                Ok(()) => return Ok(result),
                Err(_changed) => continue,
            }
        }
    }

    /// [`update`](Self::update) of a write that changes the key's expiry:
    /// the value and its expiry index entries in one sled transaction, so
    /// that the index always matches the stored values (a crash included).
    fn update_indexed<R>(
        &self,
        key: &[u8],
        op: Operation,
        decide: impl Fn(Option<(&[u8], u64)>) -> Result<Decision<R>>,
    ) -> Result<R> {
        let now = self.now();
        let outcome = (&self.data, &self.expiry).transaction(
            |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                let raw = data.get(key)?;
                let header = match raw.as_deref().map(decode_header) {
                    None => None,
                    Some(Ok(header)) => Some(header),
                    Some(Err(err)) => return abort(err.with_key(key).context(NAME, op)),
                };
                let live = match (&raw, header) {
                    (Some(raw), Some(h)) if h.expires_at == 0 || now < h.expires_at => {
                        Some((&raw[h.len..], h.expires_at))
                    }
                    _ => None,
                };
                match decide(live) {
                    Err(err) => abort(err),
                    Ok(Decision::Keep(result)) => Ok(result),
                    Ok(Decision::Write {
                        value,
                        expires_at,
                        result,
                    }) => {
                        let old_expiry = header.map_or(0, |h| h.expires_at);
                        let new_expiry = if value.is_some() { expires_at } else { 0 };
                        match value {
                            Some(value) => {
                                data.insert(key, encode_value(&value, expires_at))?;
                                if expires_at != 0 {
                                    expiry.insert(index_key(expires_at, key), &[])?;
                                }
                            }
                            None => {
                                data.remove(key)?;
                            }
                        }
                        if old_expiry != 0 && old_expiry != new_expiry {
                            expiry.remove(index_key(old_expiry, key))?;
                        }
                        Ok(result)
                    }
                }
            },
        );
        tx_result(outcome, op)
    }

    pub(super) fn put(&self, key: &[u8], value: &[u8], options: PutOptions) -> Result<()> {
        self.limits.check_entry(NAME, Operation::Put, key, value)?;
        let expires_at = self.expiry(options);
        if expires_at != 0 {
            return self.update_indexed(key, Operation::Put, |_| {
                Ok(Decision::Write {
                    value: Some(value.to_vec()),
                    expires_at,
                    result: (),
                })
            });
        }
        // The hot path: one plain insert; the index only needs care if the
        // replaced value had a TTL.
        let old = self
            .data
            .insert(key, encode_value(value, 0))
            .map_err(|e| sled_error(e, Operation::Put))?;
        self.unindex_stale(key, old.as_ref(), Operation::Put)
    }

    /// Removes `key`; returns the live value it held.
    pub(super) fn remove(&self, key: &[u8], op: Operation) -> Result<Option<Bytes>> {
        self.limits.check_key(NAME, op, key)?;
        let Some(old) = self.data.remove(key).map_err(|e| sled_error(e, op))? else {
            return Ok(None);
        };
        self.unindex_stale(key, Some(&old), op)?;
        let header = decode_header(&old).map_err(|e| e.with_key(key).context(NAME, op))?;
        let live = header.expires_at == 0 || self.now() < header.expires_at;
        Ok(live.then(|| payload(old, header)))
    }

    pub(super) fn ttl(&self, key: &[u8]) -> Result<KeyTtl> {
        self.limits.check_key(NAME, Operation::Ttl, key)?;
        Ok(match self.live_raw(key, Operation::Ttl)? {
            None => KeyTtl::Missing,
            Some((_, header)) => self.left(header.expires_at),
        })
    }

    pub(super) fn get_with_ttl(&self, key: &[u8]) -> Result<Option<(Bytes, KeyTtl)>> {
        let op = Operation::GetWithTtl;
        self.limits.check_key(NAME, op, key)?;
        Ok(self.live_raw(key, op)?.map(|(raw, header)| {
            let left = self.left(header.expires_at);
            (payload(raw, header), left)
        }))
    }

    /// The time a live value expiring at `expires_at` (0: never) has left.
    fn left(&self, expires_at: u64) -> KeyTtl {
        match expires_at {
            0 => KeyTtl::Persistent,
            at => KeyTtl::ExpiresIn(Duration::from_millis(at.saturating_sub(self.now()))),
        }
    }

    pub(super) fn list_page(
        &self,
        prefix: &[u8],
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyPage> {
        self.limits.check_key(NAME, Operation::ListKeys, prefix)?;
        if limit == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a page limit must be at least 1",
            )
            .context(NAME, Operation::ListKeys));
        }
        use std::ops::Bound;
        let start = match cursor {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let now = self.now();
        let mut keys = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for item in self.data.range::<Vec<u8>, _>((start, end)) {
            let (key, raw) = item.map_err(|e| sled_error(e, Operation::ListKeys))?;
            if !key.starts_with(prefix) {
                continue;
            }
            let header = decode_header(&raw)
                .map_err(|e| e.with_key(&key).context(NAME, Operation::ListKeys))?;
            if header.expires_at != 0 && header.expires_at <= now {
                continue;
            }
            if keys.len() == limit {
                next = keys.last().cloned();
                break;
            }
            keys.push(Bytes::from_owner(key));
        }
        Ok(KeyPage { keys, next })
    }

    pub(super) fn count(&self) -> Result<u64> {
        let now = self.now();
        let mut count = 0u64;
        for item in self.data.iter() {
            let (key, raw) = item.map_err(|e| sled_error(e, Operation::Count))?;
            let header = decode_header(&raw)
                .map_err(|e| e.with_key(&key).context(NAME, Operation::Count))?;
            if header.expires_at == 0 || now < header.expires_at {
                count += 1;
            }
        }
        Ok(count)
    }

    pub(super) fn clear(&self) -> Result<()> {
        self.data
            .clear()
            .map_err(|e| sled_error(e, Operation::Clear))?;
        self.expiry
            .clear()
            .map_err(|e| sled_error(e, Operation::Clear))
    }

    pub(super) fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        options: PutOptions,
        op: Operation,
    ) -> Result<CasOutcome> {
        match new {
            Some(value) => self.limits.check_entry(NAME, op, key, value)?,
            None => self.limits.check_key(NAME, op, key)?,
        }
        let expires_at = if new.is_some() {
            self.expiry(options)
        } else {
            0
        };
        self.update(key, op, |live| {
            let current = live.map(|(value, _)| value);
            Ok(if current == expected {
                Decision::Write {
                    value: new.map(<[u8]>::to_vec),
                    expires_at,
                    result: CasOutcome::Swapped,
                }
            } else {
                Decision::Keep(CasOutcome::Conflict(current.map(Bytes::copy_from_slice)))
            })
        })
    }

    pub(super) fn increment(&self, key: &[u8], delta: i64, options: PutOptions) -> Result<i64> {
        let op = Operation::Increment;
        self.limits.check_key(NAME, op, key)?;
        let created_expiry = self.expiry(options);
        self.update(key, op, |live| {
            let (next, expires_at) = match live {
                Some((value, expires_at)) => (
                    apply_increment(value, delta).map_err(|e| e.with_key(key).context(NAME, op))?,
                    expires_at,
                ),
                None => (delta, created_expiry),
            };
            Ok(Decision::Write {
                value: Some(next.to_string().into_bytes()),
                expires_at,
                result: next,
            })
        })
    }
}

/// What [`Inner::update`] should do with a key.
enum Decision<R> {
    /// Store `value` (`None`: delete) expiring at `expires_at` (0: never).
    Write {
        value: Option<Vec<u8>>,
        expires_at: u64,
        result: R,
    },
    /// Leave the key as it is.
    Keep(R),
}
