//! The background thread that removes expired keys, shared by the
//! in-process backends. It holds only a weak reference and stops when the
//! backend is dropped.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Weak;
use std::thread;
use std::time::Duration;

/// A running sweeper: dropping it stops the thread and waits for it to
/// end (a sweep under way finishes first), so that a backend dropped
/// while its sweeper held it is gone when its drop returns.
#[derive(Debug)]
pub(crate) struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(sweeper) = self.thread.take() {
            if sweeper.thread().id() != thread::current().id() {
                let _ = sweeper.join();
            }
        }
    }
}

/// Runs `sweep` on the backend behind `target` every `interval` until the
/// returned [`Sweeper`] is dropped. `None` if no thread could be started
/// (expired keys are then removed on read only).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    name: &'static str,
    target: Weak<T>,
    interval: Duration,
    sweep: fn(&T),
) -> Option<Sweeper> {
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
        Ok(thread) => Some(Sweeper {
            stop: Some(stop),
            thread: Some(thread),
        }),
        Err(err) => {
            tracing::warn!(%err, backend = name, "could not start the TTL sweeper; expired keys are removed on read only");
            None
        }
    }
}
