//! Key placement and listing: hash slots, glob escaping, and paging `SCAN`
//! across a single server or every Cluster primary.

use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::KeyPage;

use super::connection::Conn;
use super::errors::redis_error;
use super::inner::Inner;

/// Escapes Redis glob metacharacters so that `prefix` matches only itself.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 8);
    for &byte in prefix {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\' | b'^' | b'-') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    pattern
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of the key or of its
/// `{hash tag}`, modulo 16384).
pub(super) fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A listing cursor: the node being scanned (empty for one server), its
/// SCAN cursor, and keys already fetched that did not fit the last page.
#[derive(Debug, Default, PartialEq, Eq)]
struct ListCursor {
    node: String,
    scan: u64,
    leftover: Vec<Bytes>,
}

impl ListCursor {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.node.len());
        out.push(1u8);
        out.extend_from_slice(&(self.node.len() as u32).to_be_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.scan.to_be_bytes());
        for key in &self.leftover {
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
        }
        Bytes::from(out)
    }

    fn decode(raw: &[u8]) -> Result<ListCursor> {
        fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if raw.len() < n {
                return None;
            }
            let (head, tail) = raw.split_at(n);
            *raw = tail;
            Some(head)
        }
        fn u32_at(raw: &mut &[u8]) -> Option<usize> {
            take(raw, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        let parse = |mut raw: &[u8]| -> Option<ListCursor> {
            if take(&mut raw, 1)? != [1u8] {
                return None;
            }
            let node_len = u32_at(&mut raw)?;
            let node = String::from_utf8(take(&mut raw, node_len)?.to_vec()).ok()?;
            let scan = u64::from_be_bytes(take(&mut raw, 8)?.try_into().ok()?);
            let mut leftover = Vec::new();
            while !raw.is_empty() {
                let len = u32_at(&mut raw)?;
                leftover.push(Bytes::copy_from_slice(take(&mut raw, len)?));
            }
            Some(ListCursor {
                node,
                scan,
                leftover,
            })
        };
        parse(raw).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "the listing cursor was not made by this backend",
            )
        })
    }
}

/// SCAN calls one `list_keys_page` makes at most before returning a short
/// page (the contract allows short pages; this bounds one call's latency).
const SCANS_PER_PAGE: usize = 16;

impl Inner {
    /// The primaries of the cluster as `host:port`, sorted.
    async fn cluster_nodes(&self, conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>> {
        let reply = conn
            .route_command(
                redis::cmd("PING"),
                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
            )
            .await
            .map_err(redis_error)?;
        let Value::Map(entries) = reply else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "the cluster did not list its primaries",
            ));
        };
        let mut nodes = Vec::with_capacity(entries.len());
        for (address, _) in entries {
            let address: String =
                redis::from_redis_value(address).map_err(|err| redis_error(err.into()))?;
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    Error::new(ErrorKind::Corrupt, format!("bad node address {address}"))
                })?;
            nodes.push((host, port));
        }
        // Listing walks nodes in the order of their "host:port" names, and
        // cursors compare those names: sort by the very same strings.
        nodes.sort_by_cached_key(|(host, port)| format!("{host}:{port}"));
        Ok(nodes)
    }

    /// One SCAN step on `node` (ignored on a single server).
    async fn scan(
        &self,
        conn: &mut Conn,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("string");
        match (conn, node) {
            (Conn::Cluster(cluster), Some((host, port))) => {
                let reply = cluster
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await
                    .and_then(|value| value.extract_error())
                    .map_err(redis_error)?;
                redis::from_redis_value(reply).map_err(|err| redis_error(err.into()))
            }
            (conn, _) => cmd.query_async(conn).await.map_err(redis_error),
        }
    }

    /// One page of keys under the backend prefix + `prefix`.
    pub(super) async fn list_page(
        &self,
        conn: &mut Conn,
        prefix: &[u8],
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyPage> {
        let full_prefix = self.full_key(prefix);
        let pattern = glob_escape(&full_prefix);
        let strip = self.config.key_prefix.len();
        let nodes = match conn {
            Conn::Cluster(cluster) => self.cluster_nodes(cluster).await?,
            Conn::Single(_) => Vec::new(),
        };
        let mut state = match cursor {
            Some(raw) => ListCursor::decode(raw)?,
            None => ListCursor {
                node: nodes
                    .first()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .unwrap_or_default(),
                ..ListCursor::default()
            },
        };
        let mut keys: Vec<Bytes> = Vec::new();
        let take = |state: &mut ListCursor, keys: &mut Vec<Bytes>| {
            let room = limit.saturating_sub(keys.len()).min(state.leftover.len());
            keys.extend(state.leftover.drain(..room));
        };
        take(&mut state, &mut keys);
        let mut done = false;
        let mut scans = 0;
        while keys.len() < limit && state.leftover.is_empty() && scans < SCANS_PER_PAGE {
            let node = if nodes.is_empty() {
                None
            } else {
                // The node the cursor names, or the next one in order if it
                // left the cluster.
                let found = nodes.iter().find(|(h, p)| format!("{h}:{p}") >= state.node);
                match found {
                    Some(node) => {
                        let name = format!("{}:{}", node.0, node.1);
                        if name != state.node {
                            state.node = name;
                            state.scan = 0;
                        }
                        Some(node)
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            };
            let count = (limit - keys.len()).clamp(10, 1000);
            let (next, found) = self.scan(conn, node, state.scan, &pattern, count).await?;
            scans += 1;
            state.leftover.extend(
                found
                    .into_iter()
                    .filter(|key| key.starts_with(&full_prefix))
                    .map(|key| Bytes::copy_from_slice(&key[strip..])),
            );
            take(&mut state, &mut keys);
            if next == 0 {
                match node {
                    None => {
                        done = true;
                        break;
                    }
                    Some((host, port)) => {
                        let current = format!("{host}:{port}");
                        match nodes.iter().find(|(h, p)| format!("{h}:{p}") > current) {
                            Some((h, p)) => {
                                state.node = format!("{h}:{p}");
                                state.scan = 0;
                            }
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                }
            } else {
                state.scan = next;
            }
        }
        let next = (!done || !state.leftover.is_empty()).then(|| state.encode());
        Ok(KeyPage { keys, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*".to_vec());
        assert_eq!(glob_escape(b""), b"*".to_vec());
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"{}x"), hash_slot(b"{}x"));
        assert_eq!(hash_slot(b""), 0);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = ListCursor {
            node: "127.0.0.1:7000".into(),
            scan: 42,
            leftover: vec![Bytes::from_static(b"a"), Bytes::from_static(b"")],
        };
        assert_eq!(ListCursor::decode(&cursor.encode()).ok(), Some(cursor));
        let err = ListCursor::decode(b"\x02junk").err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::InvalidArgument));
    }
}
