//! Configuration for every command: `.env` files, the shell and flags, layered,
//! validated and normalized, with secrets that never print.

mod forward;
mod secret;

pub use forward::Forward;
pub use secret::Secret;
