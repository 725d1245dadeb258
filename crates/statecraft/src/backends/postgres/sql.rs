//! The statements' texts, and the shapes of their parameters and rows.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;

use crate::backend::error::Result;
use crate::backend::options::CasOutcome;

use super::config::quoted;
use super::errors::corrupt;

/// `expires_at` from a millisecond TTL parameter (`NULL`: no expiry).
const EXPIRY: &str = "now() + $3::int8 * interval '1 millisecond'";
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

/// Every statement, with the table name filled in once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) get: String,
    pub(super) put: String,
    pub(super) delete: String,
    pub(super) ttl: String,
    pub(super) get_with_ttl: String,
    pub(super) list_first: String,
    pub(super) list_first_bounded: String,
    pub(super) list_next: String,
    pub(super) list_next_bounded: String,
    pub(super) count: String,
    pub(super) clear: String,
    pub(super) cas_swap: String,
    pub(super) cas_delete: String,
    pub(super) cas_insert: String,
    pub(super) take: String,
    pub(super) increment: String,
    pub(super) batch_get: String,
    pub(super) batch_put: String,
    pub(super) batch_delete: String,
    pub(super) purge: String,
    pub(super) lock_present: String,
    pub(super) lock_absent: String,
    pub(super) lock_row: String,
}

impl Sql {
    pub(super) fn new(table: &str) -> Sql {
        let t = quoted(table);
        let upsert = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                      expires_at = EXCLUDED.expires_at";
        let list = |lower: &str, bounded: bool| {
            format!(
                "SELECT key FROM {t} WHERE key {lower} $1 {} AND {LIVE} ORDER BY key LIMIT $2",
                if bounded { "AND key < $3" } else { "" }
            )
        };
        let cas = |change: &str| {
            format!(
                "WITH cur AS (SELECT value FROM {t} WHERE key = $1 AND {LIVE}), \
                 change AS ({change} RETURNING 1) \
                 SELECT (SELECT count(*) FROM change) > 0, (SELECT value FROM cur)"
            )
        };
        Sql {
            get: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE}"),
            put: format!(
                "INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, {EXPIRY}) {upsert}"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            ttl: format!(
                "SELECT (extract(epoch FROM expires_at - now()) * 1000)::int8 \
                 FROM {t} WHERE key = $1 AND {LIVE}"
            ),
            get_with_ttl: format!(
                "SELECT value, (extract(epoch FROM expires_at - now()) * 1000)::int8 \
                 FROM {t} WHERE key = $1 AND {LIVE}"
            ),
            list_first: list(">=", false),
            list_first_bounded: list(">=", true),
            list_next: list(">", false),
            list_next_bounded: list(">", true),
            count: format!("SELECT count(*) FROM {t} WHERE {LIVE}"),
            clear: format!("DELETE FROM {t}"),
            cas_swap: cas(&format!(
                "UPDATE {t} SET value = $4, expires_at = {EXPIRY} \
                 WHERE key = $1 AND value = $2 AND {LIVE}"
            )),
            cas_delete: cas(&format!(
                "DELETE FROM {t} WHERE key = $1 AND value = $2 AND {LIVE}"
            )),
            cas_insert: cas(&format!(
                "INSERT INTO {t} AS s (key, value, expires_at) VALUES ($1, $2, {EXPIRY}) \
                 {upsert} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()"
            )),
            take: format!("DELETE FROM {t} WHERE key = $1 RETURNING value, {LIVE}"),
            // The stored text must be a plain decimal i64: anything else makes
            // the new value NULL, which the NOT NULL constraint rejects
            // (23502, reported as NotAnInteger) without writing. The sum is
            // numeric, so only the final ::int8 can overflow (22003).
            increment: format!(
                "INSERT INTO {t} AS s (key, value, expires_at) \
                 VALUES ($1, convert_to($2::int8::text, 'UTF8'), {EXPIRY}) \
                 ON CONFLICT (key) DO UPDATE SET \
                 value = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= now() \
                     THEN EXCLUDED.value \
                     ELSE convert_to(((CASE \
                         WHEN encode(s.value, 'escape') ~ '^(0|-?[1-9][0-9]{{0,18}})$' \
                         AND encode(s.value, 'escape')::numeric \
                             BETWEEN -9223372036854775808 AND 9223372036854775807 \
                         THEN encode(s.value, 'escape')::numeric END) \
                         + $2::int8)::int8::text, 'UTF8') END, \
                 expires_at = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= now() \
                     THEN EXCLUDED.expires_at ELSE s.expires_at END \
                 RETURNING value"
            ),
            batch_get: format!("SELECT key, value FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            batch_put: format!(
                "INSERT INTO {t} (key, value, expires_at) \
                 SELECT k, v, {EXPIRY} FROM unnest($1::bytea[], $2::bytea[]) AS u(k, v) \
                 ORDER BY k {upsert}"
            ),
            batch_delete: format!("DELETE FROM {t} WHERE key = ANY($1) RETURNING {LIVE}"),
            purge: format!(
                "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} \
                 WHERE expires_at <= now() LIMIT 10000)"
            ),
            lock_present: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE} FOR UPDATE"),
            lock_absent: format!(
                "INSERT INTO {t} (key, value, expires_at) VALUES ($1, '', '-infinity') \
                 ON CONFLICT (key) DO NOTHING RETURNING 1"
            ),
            lock_row: format!("SELECT value, {LIVE} FROM {t} WHERE key = $1 FOR UPDATE"),
        }
    }
}

/// The longest TTL written: 100 years, which PostgreSQL timestamps hold
/// (`Duration::MAX` would overflow them); longer ones are cut to it.
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

pub(super) fn millis(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| {
        i64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1))
            .unwrap_or(MAX_TTL_MS)
            .min(MAX_TTL_MS)
    })
}

/// The smallest byte string above every string that starts with `prefix`,
/// or `None` when there is none (an empty prefix or only `0xff` bytes).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(super) fn value_of(row: &Row, index: usize) -> Result<Bytes> {
    row.try_get::<_, Vec<u8>>(index)
        .map(Bytes::from)
        .map_err(corrupt)
}

pub(super) fn cas_outcome(row: &Row) -> Result<CasOutcome> {
    let swapped: bool = row.try_get(0).map_err(corrupt)?;
    if swapped {
        return Ok(CasOutcome::Swapped);
    }
    let current: Option<Vec<u8>> = row.try_get(1).map_err(corrupt)?;
    Ok(CasOutcome::Conflict(current.map(Bytes::from)))
}

/// Keeps the last write of each key, so that one `INSERT … ON CONFLICT`
/// never touches a row twice. (The statement then writes in key order, so
/// that concurrent batches lock rows in the same order and never deadlock.)
pub(super) fn last_write_wins(entries: Vec<(Bytes, Bytes)>) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut position: HashMap<Bytes, usize> = HashMap::with_capacity(entries.len());
    let mut keys = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        match position.get(&key) {
            Some(&at) => values[at] = value,
            None => {
                position.insert(key.clone(), keys.len());
                keys.push(key);
                values.push(value);
            }
        }
    }
    (keys, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_the_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn batches_keep_the_last_write_of_a_key() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let (keys, values) =
            last_write_wins(vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))]);
        assert_eq!(keys, vec![b("a"), b("b")]);
        assert_eq!(values, vec![b("3"), b("2")]);
    }
}
