//! (placeholder, replaced by the crate's work)

pub mod control;
