//! [`AtomicUpdate`]s on Redis: the update's own Lua copy, run by SHA in one
//! round trip (loaded again on `NOSCRIPT`), at the server's clock. An
//! update without a script takes the contract's compare-and-swap loop.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use redis::{RedisError, Script};

use crate::backend::atomic::AtomicUpdate;
use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::backend::RedisBackend;
use super::errors::{redis_error, Idempotent};

/// The prefix of a script's error reply that means "bad input".
const INVALID_ARGUMENT: &str = "statecraft:invalid_argument";

/// The scripts of the updates run so far, by their source.
#[derive(Default)]
pub(super) struct Scripts(RwLock<HashMap<&'static str, Arc<Script>>>);

impl Scripts {
    fn get(&self, source: &'static str) -> Arc<Script> {
        if let Some(script) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source)
        {
            return script.clone();
        }
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(source)
            .or_insert_with(|| Arc::new(Script::new(source)))
            .clone()
    }
}

fn script_error(update: &dyn AtomicUpdate, err: RedisError) -> Error {
    let detail = err.detail().unwrap_or_default();
    let message = err.to_string();
    if detail.contains(INVALID_ARGUMENT) || message.contains(INVALID_ARGUMENT) {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{} refused its input: {detail}", update.name()),
        )
    } else {
        redis_error(err)
    }
}

impl RedisBackend {
    /// Runs `update` natively, or `None` when it has no Redis script.
    pub(super) async fn run_update(
        &self,
        key: &[u8],
        update: &dyn AtomicUpdate,
        input: &[u8],
    ) -> Option<Result<Bytes>> {
        let source = update.redis_script()?;
        let inner = &*self.inner;
        let run = async {
            let full = self.check_key(Operation::UpdateAtomic, key)?;
            let script = inner.scripts.get(source);
            let mut invocation = script.prepare_invoke();
            let default_ttl = super::inner::ttl_millis(inner.config.default_ttl).unwrap_or(0);
            invocation.key(full.as_slice()).arg(input).arg(default_ttl);
            let invocation = &invocation;
            inner
                .run(
                    Operation::UpdateAtomic,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let raw: Vec<u8> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(|err| script_error(update, err))?;
                        Ok(Bytes::from(raw))
                    },
                )
                .await
        };
        Some(inner.counted_write(run).await)
    }
}
