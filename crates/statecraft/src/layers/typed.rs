//! [`Typed`]: a typed view of a backend through a serde [`Codec`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::options::{CasOutcome, PutOptions};
use crate::backend::StateBackend;

/// Turns values into bytes and back.
pub trait Codec: Send + Sync + fmt::Debug + Default {
    /// A short name for error messages.
    const NAME: &'static str;
    /// Encodes `value`.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>>;
    /// Decodes bytes written by [`encode`](Codec::encode).
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

fn codec_error(
    codec: &'static str,
    op: Operation,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(ErrorKind::Codec, format!("{codec} codec failed"))
        .with_backend("typed")
        .with_operation(op)
        .with_source(err)
}

/// JSON, readable by any language.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| codec_error(Self::NAME, Operation::Encode, e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| codec_error(Self::NAME, Operation::Decode, e))
    }
}

/// Postcard: a compact, stable binary format (not self-describing: readers
/// must use the same type as writers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    const NAME: &'static str = "postcard";

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| codec_error(Self::NAME, Operation::Encode, e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| codec_error(Self::NAME, Operation::Decode, e))
    }
}

/// A view of a backend that stores values of type `T` with codec `C`.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{typed::Json, MemoryBackend, PutOptions, Typed};
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Session { user: String, visits: u32 }
///
/// let sessions: Typed<Session, _, Json> = Typed::new(MemoryBackend::new());
/// sessions.put(b"s1", &Session { user: "ada".into(), visits: 1 }).await?;
/// let visits = sessions.update(b"s1", PutOptions::new(), |s| s.map(|s| Session { visits: s.visits + 1, ..s })).await?;
/// assert_eq!(visits.map(|s| s.visits), Some(2));
/// # Ok(()) }
/// ```
pub struct Typed<T, B, C = Json> {
    backend: B,
    codec: C,
    _type: PhantomData<fn() -> T>,
}

impl<T, B: fmt::Debug, C: Codec> fmt::Debug for Typed<T, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed")
            .field("type", &std::any::type_name::<T>())
            .field("codec", &C::NAME)
            .field("backend", &self.backend)
            .finish()
    }
}

impl<T, B, C> Typed<T, B, C>
where
    T: Serialize + DeserializeOwned,
    B: StateBackend,
    C: Codec,
{
    /// A typed view of `backend`.
    pub fn new(backend: B) -> Self {
        Typed {
            backend,
            codec: C::default(),
            _type: PhantomData,
        }
    }

    /// The backend underneath.
    pub fn get_ref(&self) -> &B {
        &self.backend
    }

    /// The value under `key`, decoded.
    pub async fn get(&self, key: &[u8]) -> Result<Option<T>> {
        match self.backend.get(key).await? {
            Some(bytes) => self.codec.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: &[u8], value: &T) -> Result<()> {
        let bytes = Bytes::from(self.codec.encode(value)?);
        self.backend
            .put_with(key, bytes, PutOptions::default())
            .await
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn put_with_ttl(&self, key: &[u8], value: &T, ttl: Duration) -> Result<()> {
        let bytes = Bytes::from(self.codec.encode(value)?);
        self.backend.put_with_ttl(key, bytes, ttl).await
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.backend.delete(key).await
    }

    /// Atomically applies `f` to the current value (`None`: absent) and
    /// stores its result (`None`: delete) with `options` (as
    /// [`put_with`](StateBackend::put_with) applies them: an earlier TTL is
    /// not kept), retrying on concurrent change. Returns what was stored.
    pub async fn update(
        &self,
        key: &[u8],
        options: PutOptions,
        mut f: impl FnMut(Option<T>) -> Option<T>,
    ) -> Result<Option<T>> {
        let mut current = self.backend.get(key).await?;
        loop {
            let decoded = match &current {
                Some(bytes) => Some(self.codec.decode(bytes)?),
                None => None,
            };
            let next = f(decoded);
            let encoded = match &next {
                Some(value) => Some(Bytes::from(self.codec.encode(value)?)),
                None => None,
            };
            match self
                .backend
                .compare_and_swap(key, current.as_deref(), encoded, options)
                .await?
            {
                CasOutcome::Swapped => return Ok(next),
                CasOutcome::Conflict(now) => current = now,
            }
        }
    }
}
