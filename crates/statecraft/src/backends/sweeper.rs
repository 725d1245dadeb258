//! The background thread that removes expired keys, shared by the
//! in-process backends. It holds only a weak reference and stops when the
//! backend is dropped.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Weak;
use std::thread;
use std::time::Duration;

/// Runs `sweep` on the backend behind `target` every `interval`; the
/// returned sender stops the thread when dropped. `None` if no thread
/// could be started (expired keys are then removed on read only).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    name: &'static str,
    target: Weak<T>,
    interval: Duration,
    sweep: fn(&T),
) -> Option<mpsc::Sender<()>> {
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = thread::Builder::new()
        .name(format!("statecraft-{name}-sweeper"))
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => match target.upgrade() {
                    Some(target) => sweep(&target),
                    None => return,
                },
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        });
    match spawned {
        Ok(_) => Some(stop),
        Err(err) => {
            tracing::warn!(%err, backend = name, "could not start the TTL sweeper; expired keys are removed on read only");
            None
        }
    }
}
