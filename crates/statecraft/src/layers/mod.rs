//! Layers: backends that wrap another backend and are backends themselves.

pub(crate) mod namespaced;
pub mod typed;
