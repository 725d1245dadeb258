//! Building blocks for authors of backends and layers.
//!
//! These are not part of the API that service code should depend on: they may
//! change in a minor release, and they tie this crate to its dependencies'
//! versions (the memory backend's map and hasher are `dashmap` and `foldhash`
//! types). Use them to write a backend or a layer that behaves exactly like
//! the built-in ones — the same counter format, the same statistics.

pub(crate) mod counter;
pub(crate) mod recorder;

pub use crate::backends::memory::{Entry as MemoryEntry, MemoryHasher, RawMemoryMap};
pub use counter::{apply_increment, parse_counter};
pub use recorder::{Found, Outcome, StatsRecorder, Timer, SAMPLE_EVERY};
