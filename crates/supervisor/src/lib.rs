//! (placeholder, replaced by the crate's work)
