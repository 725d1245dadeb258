//! Layers: backends that wrap another backend and are backends themselves.

pub(crate) mod cached;
pub(crate) mod fallback;
pub(crate) mod metrics;
pub(crate) mod namespaced;
pub(crate) mod operation;
pub(crate) mod retry;
pub(crate) mod stripes;
pub(crate) mod tiered;
pub(crate) mod timeout;
pub mod typed;
