//! Export and import of local breakers' states, for a backup or a move to
//! another process: what each breaker is doing, not its window of recent
//! calls. An open breaker stays open for what was left of its opening; a
//! half-open one comes back as an opening that has ended (its next caller
//! is a probe); a closed one comes back closed and counts afresh; an
//! operator's setting (forced open, disabled, metrics only) is kept.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::clock::{Clock, SystemClock};
use crate::backend::error::{Error, ErrorKind, Result};

use super::local::LocalBreaker;
use super::machine::Phase;
use super::registry::BreakerRegistry;

/// One breaker's state as exported: what it is doing, not its window of
/// recent calls. Imported, an open breaker stays open for what was left of
/// its opening less the time since the export (by the wall clock; at most
/// the importer's longest); a half-open one comes
/// back as an opening that has ended (its next caller is a probe); a
/// closed one comes back closed and counts afresh; an operator's setting
/// (forced open, disabled, metrics only) is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedBreaker {
    /// Its name.
    pub name: String,
    /// Where it was.
    pub phase: Phase,
    /// What was left of its opening, in milliseconds (`Open` only).
    pub open_remaining_ms: Option<u64>,
    /// Openings since it last closed (the back-off goes on from there).
    pub openings: u32,
    /// When it was exported (Unix milliseconds), for the reader.
    pub exported_at_ms: u64,
}

impl LocalBreaker {
    /// Its state now, to [`import`](Self::import) elsewhere.
    pub fn export(&self) -> ExportedBreaker {
        let (phase, open_remaining_ms, openings) = self.shared.snapshot();
        ExportedBreaker {
            name: self.name().to_string(),
            phase,
            open_remaining_ms,
            openings,
            exported_at_ms: SystemClock.now_millis(),
        }
    }

    /// Takes on an exported state (whatever its name): see
    /// [`ExportedBreaker`] for what is carried. Hooks and events see the
    /// transition, if the phase changes.
    pub fn import(&self, exported: &ExportedBreaker) {
        // The opening went on while the export sat in its file.
        let since = SystemClock
            .now_millis()
            .saturating_sub(exported.exported_at_ms);
        let remaining = exported
            .open_remaining_ms
            .map(|ms| ms.saturating_sub(since));
        self.shared
            .restore(exported.phase, remaining, exported.openings);
    }
}

impl BreakerRegistry<LocalBreaker> {
    /// Every breaker's state, by name.
    pub fn export(&self) -> Vec<ExportedBreaker> {
        self.all().iter().map(|(_, b)| b.export()).collect()
    }

    /// Writes [`export`](Self::export) to `path` as JSON (replacing it
    /// whole: written beside it, then renamed).
    pub fn export_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_vec_pretty(&self.export())
            .map_err(|err| Error::new(ErrorKind::Codec, err.to_string()))?;
        let partial = path.with_extension("partial");
        let io =
            |err: std::io::Error| Error::new(ErrorKind::Io, format!("{}: {err}", path.display()));
        std::fs::write(&partial, text).map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)
    }

    /// Each exported breaker's state taken on by the breaker of its name
    /// here (made from this registry's configuration if new); returns how
    /// many.
    pub fn import(&self, exported: &[ExportedBreaker]) -> usize {
        for one in exported {
            self.get(&one.name).import(one);
        }
        exported.len()
    }

    /// [`import`](Self::import) from a file [`export_to`](Self::export_to)
    /// wrote. A file that is not such an export is an error, and nothing
    /// is imported from it.
    pub fn import_from(&self, path: impl AsRef<Path>) -> Result<usize> {
        let path = path.as_ref();
        let text = std::fs::read(path)
            .map_err(|err| Error::new(ErrorKind::Io, format!("{}: {err}", path.display())))?;
        let exported: Vec<ExportedBreaker> = serde_json::from_slice(&text).map_err(|err| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{}: not a breaker export: {err}", path.display()),
            )
        })?;
        Ok(self.import(&exported))
    }
}
