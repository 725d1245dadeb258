//! Portable checkpoints: the keys under a prefix, with their values and
//! remaining TTLs, written to a file that any backend can restore.
//!
//! The format is the same for every backend, so state moves between any two
//! of them (Redis to PostgreSQL, sled to Redis, …):
//!
//! ```text
//! magic  b"STATECRAFT-CHECKPOINT\n"  version u8 = 1
//! entry  0x01 | key_len u32 | key | value_len u32 | value | ttl_ms u64
//! end    0x00 | entry_count u64
//! ```
//!
//! Integers are big-endian; `ttl_ms = u64::MAX` marks a value without TTL. A
//! TTL is the time that was left at export; restoring starts it again from
//! the restore. The end record makes a truncated file an error rather than a
//! silent partial restore.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::options::{KeyTtl, PutOptions};
use crate::backend::{StateBackend, StateBackendExt};

const MAGIC: &[u8] = b"STATECRAFT-CHECKPOINT\n";
const VERSION: u8 = 1;
const ENTRY: u8 = 1;
const END: u8 = 0;
const PERSISTENT: u64 = u64::MAX;
/// Keys read (and written back) per round trip.
const PAGE: usize = 500;

fn io_error(op: Operation, err: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, "checkpoint file I/O failed")
        .with_backend("checkpoint")
        .with_operation(op)
        .with_source(err)
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, message)
        .with_backend("checkpoint")
        .with_operation(Operation::Restore)
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| {
        Error::new(
            ErrorKind::ValueTooLarge,
            "an entry over 4 GiB cannot be checkpointed",
        )
        .with_backend("checkpoint")
        .with_operation(Operation::Checkpoint)
    })
}

/// Writes every live key that starts with `prefix` (with its value and
/// remaining TTL) to `out`; returns how many entries were written.
///
/// The export is not a snapshot: a key written while it runs may or may not
/// be in it, and a key deleted while it runs is left out.
pub async fn export<B, W>(backend: &B, prefix: &[u8], out: &mut W) -> Result<u64>
where
    B: StateBackend + ?Sized,
    W: Write,
{
    let write = |out: &mut W, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|err| io_error(Operation::Checkpoint, err))
    };
    write(out, MAGIC)?;
    write(out, &[VERSION])?;
    let mut count = 0u64;
    // A backend without ordered listing (Redis SCAN) may list a key twice;
    // writing it twice could let an older value win on restore.
    let mut seen = (!backend.capabilities().ordered_listing).then(std::collections::HashSet::new);
    let mut keys = backend.key_stream(prefix, PAGE).chunks(PAGE);
    while let Some(page) = keys.next().await {
        let mut page: Vec<Bytes> = page.into_iter().collect::<Result<_>>()?;
        if let Some(seen) = seen.as_mut() {
            page.retain(|key| seen.insert(key.clone()));
        }
        let values = backend.batch_get(&page).await?;
        for (key, value) in page.iter().zip(values) {
            let Some(value) = value else { continue };
            let ttl = match backend.ttl(key).await? {
                KeyTtl::Missing => continue,
                KeyTtl::Persistent => PERSISTENT,
                KeyTtl::ExpiresIn(left) => u64::try_from(left.as_millis())
                    .unwrap_or(PERSISTENT - 1)
                    .max(1),
            };
            write(out, &[ENTRY])?;
            write(out, &len_u32(key.len())?.to_be_bytes())?;
            write(out, key)?;
            write(out, &len_u32(value.len())?.to_be_bytes())?;
            write(out, &value)?;
            write(out, &ttl.to_be_bytes())?;
            count += 1;
        }
    }
    write(out, &[END])?;
    write(out, &count.to_be_bytes())?;
    out.flush()
        .map_err(|err| io_error(Operation::Checkpoint, err))?;
    Ok(count)
}

fn read_exact<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("the checkpoint ends early (truncated file?)")
        } else {
            io_error(Operation::Restore, err)
        }
    })
}

fn read_u32<R: Read>(input: &mut R) -> Result<u32> {
    let mut raw = [0u8; 4];
    read_exact(input, &mut raw)?;
    Ok(u32::from_be_bytes(raw))
}

fn read_u64<R: Read>(input: &mut R) -> Result<u64> {
    let mut raw = [0u8; 8];
    read_exact(input, &mut raw)?;
    Ok(u64::from_be_bytes(raw))
}

fn read_bytes<R: Read>(input: &mut R) -> Result<Bytes> {
    let len = read_u32(input)? as usize;
    // Grows with the data actually read, so a damaged length cannot make
    // the restore allocate gigabytes up front.
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    input
        .by_ref()
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|err| io_error(Operation::Restore, err))?;
    if buf.len() != len {
        return Err(corrupt("the checkpoint ends early (truncated file?)"));
    }
    Ok(Bytes::from(buf))
}

/// Reads a checkpoint written by [`export`] into `backend`; returns how many
/// entries were restored. Existing keys with the same names are overwritten;
/// other keys are left alone.
/// Entries exported without a TTL are restored without one, even on a
/// target with a default TTL ([`PutOptions::no_expiry`]).
///
/// A file that is not a checkpoint, or is truncated, is an
/// [`ErrorKind::Corrupt`] error; entries before the damage have been written.
pub async fn restore<B, R>(backend: &B, input: &mut R) -> Result<u64>
where
    B: StateBackend + ?Sized,
    R: Read,
{
    let mut header = vec![0u8; MAGIC.len() + 1];
    read_exact(input, &mut header)?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a statecraft checkpoint"));
    }
    if header[MAGIC.len()] != VERSION {
        return Err(corrupt(format!(
            "checkpoint version {} is not supported (this build reads {VERSION})",
            header[MAGIC.len()]
        )));
    }
    let mut restored = 0u64;
    let mut persistent: Vec<(Bytes, Bytes)> = Vec::with_capacity(PAGE);
    loop {
        let mut tag = [0u8; 1];
        read_exact(input, &mut tag)?;
        match tag[0] {
            ENTRY => {
                let key = read_bytes(input)?;
                let value = read_bytes(input)?;
                let ttl = read_u64(input)?;
                if ttl == PERSISTENT {
                    persistent.push((key, value));
                    if persistent.len() == PAGE {
                        let batch = std::mem::take(&mut persistent);
                        backend
                            .batch_put(batch, PutOptions::new().no_expiry())
                            .await?;
                    }
                } else {
                    backend
                        .put_with_ttl(&key, value, Duration::from_millis(ttl))
                        .await?;
                }
                restored += 1;
            }
            END => {
                let expected = read_u64(input)?;
                if !persistent.is_empty() {
                    backend
                        .batch_put(persistent, PutOptions::new().no_expiry())
                        .await?;
                }
                if expected != restored {
                    return Err(corrupt(format!(
                        "the checkpoint says {expected} entries but holds {restored}"
                    )));
                }
                return Ok(restored);
            }
            other => return Err(corrupt(format!("unknown record tag {other}"))),
        }
    }
}
