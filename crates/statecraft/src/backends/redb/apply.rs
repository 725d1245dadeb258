//! The writes, applied to the tables of one write transaction.
//!
//! Each returns redb's own failure as the outer error (it fails the whole
//! group) and the write's own error (a value that is not an integer, a
//! damaged header) as the inner one, having written nothing.

use bytes::Bytes;
use redb::{ReadableTable as _, StorageError, Table, WriteTransaction};

use crate::backend::error::{Operation, Result};
use crate::backend::options::CasOutcome;
use crate::backend::transaction::{Transaction, TransactionWrite};
use crate::backends::stored::{decode_header, encode_value, index_key, split_index_key, Header};
use crate::raw::counter::apply_increment;

use super::store::{payload, Shared};
use super::writer::{Answer, Write};
use super::{DATA, EXPIRY, NAME};

/// The most index entries one sweep looks at (one commit's worth).
pub(super) const SWEEP_BATCH: usize = 10_000;

type Outcome<T> = std::result::Result<Result<T>, StorageError>;

/// The data table and its expiry index, open in one write transaction.
pub(super) struct Tables<'t> {
    data: Table<'t, &'static [u8], &'static [u8]>,
    expiry: Table<'t, &'static [u8], ()>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> std::result::Result<Self, redb::TableError> {
        Ok(Tables {
            data: txn.open_table(DATA)?,
            expiry: txn.open_table(EXPIRY)?,
        })
    }

    /// Applies `write` at `now`.
    pub(super) fn apply(
        &mut self,
        shared: &Shared,
        write: &Write,
        op: Operation,
        now: u64,
    ) -> Outcome<Answer> {
        Ok(match write {
            Write::Put {
                key,
                value,
                options,
            } => {
                self.store(key, Some(value), shared.expiry(*options, now))?;
                Ok(Answer::Done)
            }
            Write::Remove { key, value } => self.remove(key, *value, op, now)?.map(Answer::Removed),
            Write::Swap {
                key,
                expected,
                new,
                options,
            } => {
                let expires_at = shared.expiry(*options, now);
                self.swap(
                    key,
                    expected.as_deref(),
                    new.as_deref(),
                    expires_at,
                    op,
                    now,
                )?
                .map(Answer::Swapped)
            }
            Write::Increment {
                key,
                delta,
                options,
            } => {
                let created = shared.expiry(*options, now);
                self.increment(key, *delta, created, op, now)?
                    .map(Answer::Counted)
            }
            Write::Apply(transaction) => self
                .transaction(shared, transaction, op, now)?
                .map(Answer::Committed),
            Write::RemoveAll(keys) => {
                // A damaged value fails the batch before anything goes.
                for key in keys {
                    if let Some(raw) = self.data.get(&key[..])? {
                        if let Err(err) = decode_header(raw.value(), NAME) {
                            return Ok(Err(err.with_key(key).context(NAME, op)));
                        }
                    }
                }
                let mut removed = 0u64;
                for key in keys {
                    match self.remove(key, false, op, now)? {
                        Ok(old) => removed += u64::from(old.is_some()),
                        Err(err) => return Ok(Err(err)),
                    }
                }
                Ok(Answer::Many(removed))
            }
            Write::Clear => {
                self.data.retain(|_, _| false)?;
                self.expiry.retain(|_, _| false)?;
                Ok(Answer::Done)
            }
            Write::Sweep => {
                let (removed, more) = self.sweep(now)?;
                Ok(Answer::Swept { removed, more })
            }
            Write::Flush => Ok(Answer::Done),
        })
    }

    /// The live value of `key` at `now`, with its header.
    fn live(&self, key: &[u8], op: Operation, now: u64) -> Outcome<Option<(Vec<u8>, Header)>> {
        let Some(guard) = self.data.get(key)? else {
            return Ok(Ok(None));
        };
        let raw = guard.value();
        Ok(match decode_header(raw, NAME) {
            Ok(header) => Ok(header.live_at(now).then(|| (raw.to_vec(), header))),
            Err(err) => Err(err.with_key(key).context(NAME, op)),
        })
    }

    /// Stores `value` (`None`: removes the key) expiring at `expires_at`
    /// (0: never), and keeps the index exact.
    fn store(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        expires_at: u64,
    ) -> std::result::Result<(), StorageError> {
        let (old, new_expiry) = match value {
            Some(value) => (
                self.data
                    .insert(key, &encode_value(value, expires_at)[..])?
                    .map(|old| expiry_of(old.value())),
                expires_at,
            ),
            None => (self.data.remove(key)?.map(|old| expiry_of(old.value())), 0),
        };
        if new_expiry != 0 {
            self.expiry.insert(&index_key(new_expiry, key)[..], ())?;
        }
        if let Some(old_expiry) = old.filter(|&at| at != 0 && at != new_expiry) {
            self.expiry.remove(&index_key(old_expiry, key)[..])?;
        }
        Ok(())
    }

    /// Removes `key`; whether it held a live value, and the value when
    /// `value` asks for it (else an empty one). A damaged value is left
    /// as it is, with an error ([`Write::Clear`] removes it).
    fn remove(
        &mut self,
        key: &[u8],
        value: bool,
        op: Operation,
        now: u64,
    ) -> Outcome<Option<Bytes>> {
        let header = match self.data.get(key)? {
            None => return Ok(Ok(None)),
            Some(raw) => match decode_header(raw.value(), NAME) {
                Ok(header) => header,
                Err(err) => return Ok(Err(err.with_key(key).context(NAME, op))),
            },
        };
        let Some(old) = self.data.remove(key)? else {
            return Ok(Ok(None));
        };
        let live = header.live_at(now).then(|| match value {
            true => payload(old.value(), header),
            false => Bytes::new(),
        });
        drop(old);
        if header.expires_at != 0 {
            self.expiry.remove(&index_key(header.expires_at, key)[..])?;
        }
        Ok(Ok(live))
    }

    fn swap(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        expires_at: u64,
        op: Operation,
        now: u64,
    ) -> Outcome<CasOutcome> {
        let current = match self.live(key, op, now)? {
            Ok(current) => current,
            Err(err) => return Ok(Err(err)),
        };
        let value = current.as_ref().map(|(raw, header)| &raw[header.len..]);
        if value != expected {
            return Ok(Ok(CasOutcome::Conflict(value.map(Bytes::copy_from_slice))));
        }
        let expires_at = if new.is_some() { expires_at } else { 0 };
        self.store(key, new, expires_at)?;
        Ok(Ok(CasOutcome::Swapped))
    }

    fn increment(
        &mut self,
        key: &[u8],
        delta: i64,
        created_expiry: u64,
        op: Operation,
        now: u64,
    ) -> Outcome<i64> {
        let current = match self.live(key, op, now)? {
            Ok(current) => current,
            Err(err) => return Ok(Err(err)),
        };
        let (next, expires_at) = match &current {
            None => (delta, created_expiry),
            Some((raw, header)) => match apply_increment(&raw[header.len..], delta) {
                Ok(next) => (next, header.expires_at),
                Err(err) => return Ok(Err(err.with_key(key).context(NAME, op))),
            },
        };
        self.store(key, Some(next.to_string().as_bytes()), expires_at)?;
        Ok(Ok(next))
    }

    fn transaction(
        &mut self,
        shared: &Shared,
        transaction: &Transaction,
        op: Operation,
        now: u64,
    ) -> Outcome<bool> {
        for (key, expected) in transaction.checks() {
            let current = match self.live(key, op, now)? {
                Ok(current) => current,
                Err(err) => return Ok(Err(err)),
            };
            let value = current.as_ref().map(|(raw, header)| &raw[header.len..]);
            if value != expected.as_deref() {
                return Ok(Ok(false));
            }
        }
        for write in transaction.writes() {
            match write {
                TransactionWrite::Put {
                    key,
                    value,
                    options,
                } => self.store(key, Some(value), shared.expiry(*options, now))?,
                TransactionWrite::Delete { key } => self.store(key, None, 0)?,
            }
        }
        Ok(Ok(true))
    }

    /// Removes the values whose index entries are due at `now`, at most
    /// [`SWEEP_BATCH`] entries; how many values went, and whether more may
    /// be due.
    fn sweep(&mut self, now: u64) -> std::result::Result<(u64, bool), StorageError> {
        let bound = now.saturating_add(1).to_be_bytes();
        let mut due = Vec::new();
        for entry in self.expiry.range(..&bound[..])? {
            let (index, ()) = entry.map(|(k, v)| (k.value().to_vec(), v.value()))?;
            due.push(index);
            if due.len() == SWEEP_BATCH {
                break;
            }
        }
        let mut removed = 0;
        for index in &due {
            self.expiry.remove(&index[..])?;
            let Some((indexed, key)) = split_index_key(index) else {
                continue;
            };
            let stored = self.data.get(key)?.map(|raw| expiry_of(raw.value()));
            // The index is written with the value, so it matches; a value
            // it does not match (none here) would be left alone.
            if stored == Some(indexed) {
                self.data.remove(key)?;
                removed += 1;
            }
        }
        Ok((removed, due.len() == SWEEP_BATCH))
    }
}

/// The expiry in the header of a stored value (0: none, or no header).
fn expiry_of(raw: &[u8]) -> u64 {
    decode_header(raw, NAME).map_or(0, |h| h.expires_at)
}
