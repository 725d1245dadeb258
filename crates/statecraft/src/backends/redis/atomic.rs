//! [`AtomicUpdate`]s on Redis, in one round trip at the server's clock: a
//! library ([`AtomicUpdate::redis_function`]) loaded once as a Redis
//! Function and called by `FCALL` (loaded again when the server lost it;
//! run by `EVALSHA` on a server without functions), or a script run by SHA
//! (loaded again on `NOSCRIPT`). An update with neither takes the
//! contract's compare-and-swap loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use redis::{RedisError, Script};

use crate::backend::atomic::{source_version, AtomicUpdate};
use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::backend::RedisBackend;
use super::connection::Conn;
use super::errors::{redis_error, Idempotent};

/// The prefix of a script's error reply that means "bad input".
const INVALID_ARGUMENT: &str = "statecraft:invalid_argument";

/// An update's Lua, as the server runs it.
struct Native {
    /// The function's (and its library's) name, when it is a library.
    function: Option<String>,
    /// The library's `FUNCTION LOAD` source.
    library: String,
    /// The script `EVALSHA` runs: the library run per call, or the script.
    script: Script,
}

/// The updates run so far, by where their source lives (hashing the
/// source itself would cost more than the call), and whether the server
/// has functions (until a call finds it has not).
pub(super) struct Scripts {
    natives: RwLock<HashMap<(usize, usize), Arc<Native>>>,
    functions: AtomicBool,
}

impl Scripts {
    pub(super) fn new(functions: bool) -> Scripts {
        Scripts {
            natives: RwLock::default(),
            functions: AtomicBool::new(functions),
        }
    }

    fn get(&self, update: &dyn AtomicUpdate) -> Option<Arc<Native>> {
        let (source, library) = match update.redis_function() {
            Some(source) => (source, true),
            None => (update.redis_script()?, false),
        };
        let at = (source.as_ptr() as usize, source.len());
        if let Some(native) = self
            .natives
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&at)
        {
            return Some(native.clone());
        }
        let native = if library {
            let name = function_name(update.name(), source);
            Native {
                library: format!(
                    "#!lua name={name}\nlocal run = (function()\n{source}\nend)()\n\
                     redis.register_function('{name}', run)\n"
                ),
                script: Script::new(&format!(
                    "return (function()\n{source}\nend)()(KEYS, ARGV)\n"
                )),
                function: Some(name),
            }
        } else {
            Native {
                function: None,
                library: String::new(),
                script: Script::new(source),
            }
        };
        Some(
            self.natives
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(at)
                .or_insert_with(|| Arc::new(native))
                .clone(),
        )
    }
}

/// `statecraft_<name>_<version>`: the update's name kept to what a function
/// name may hold, and the source's version (two versions side by side
/// never replace each other's library).
fn function_name(name: &str, source: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("statecraft_{name}_{}", source_version(source))
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

/// What a failed `FCALL` means.
enum Missing {
    /// The server does not have the function (never loaded, or lost).
    Function,
    /// The server has no functions at all (Redis before 7).
    Functions,
}

fn missing(err: &RedisError) -> Option<Missing> {
    let text = format!("{} {}", err, err.detail().unwrap_or_default()).to_ascii_lowercase();
    if text.contains("function not found") {
        Some(Missing::Function)
    } else if text.contains("unknown command") {
        Some(Missing::Functions)
    } else {
        None
    }
}

impl RedisBackend {
    /// Runs `update` natively, or `None` when it has no Redis copy.
    pub(super) async fn run_update(
        &self,
        key: &[u8],
        update: &dyn AtomicUpdate,
        input: &[u8],
    ) -> Option<Result<Bytes>> {
        let native = self.inner.scripts.get(update)?;
        let inner = &*self.inner;
        let run = async {
            let full = if update.stores_input() {
                self.check_entry(Operation::UpdateAtomic, key, input)?
            } else {
                self.check_key(Operation::UpdateAtomic, key)?
            };
            let default_ttl = super::inner::ttl_millis(inner.config.default_ttl).unwrap_or(0);
            let (native, full) = (&native, full.as_slice());
            inner
                .run(
                    Operation::UpdateAtomic,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let raw = self
                            .call_native(&mut conn, native, full, input, default_ttl)
                            .await
                            .map_err(|err| script_error(update, err))?;
                        Ok(Bytes::from(raw))
                    },
                )
                .await
        };
        Some(inner.counted_write(run).await)
    }

    /// One call of `native`: by `FCALL` while the server has functions
    /// (loading the library when it is missing, then calling again), else
    /// by `EVALSHA`.
    async fn call_native(
        &self,
        conn: &mut Conn,
        native: &Native,
        key: &[u8],
        input: &[u8],
        default_ttl: u64,
    ) -> std::result::Result<Vec<u8>, RedisError> {
        let scripts = &self.inner.scripts;
        if let Some(function) = native.function.as_deref() {
            if scripts.functions.load(Ordering::Relaxed) {
                let mut fcall = redis::cmd("FCALL");
                fcall
                    .arg(function)
                    .arg(1)
                    .arg(key)
                    .arg(input)
                    .arg(default_ttl);
                match fcall.query_async::<Vec<u8>>(conn).await {
                    Err(err) => match missing(&err) {
                        Some(Missing::Function) => {
                            // On a Cluster this reaches every primary.
                            redis::cmd("FUNCTION")
                                .arg("LOAD")
                                .arg("REPLACE")
                                .arg(&native.library)
                                .query_async::<()>(conn)
                                .await?;
                            return fcall.query_async(conn).await;
                        }
                        Some(Missing::Functions) => {
                            tracing::info!(
                                backend = self.inner.name,
                                "the server has no functions (Redis before 7): \
                                 native updates run by EVALSHA"
                            );
                            scripts.functions.store(false, Ordering::Relaxed);
                        }
                        None => return Err(err),
                    },
                    answered => return answered,
                }
            }
        }
        let mut invocation = native.script.prepare_invoke();
        invocation.key(key).arg(input).arg(default_ttl);
        invocation.invoke_async(conn).await
    }
}
