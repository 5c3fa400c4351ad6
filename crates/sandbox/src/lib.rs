//! The sandbox: our own bastion (a russh server), a local `redis-server` and
//! stand-in services, so the whole dev loop runs on any machine without AWS.
//!
//! [`Sandbox::up`] starts Redis and the bastion in a private temporary
//! directory and writes the env file the dev pipeline reads; [`run_standin`]
//! is the body of the stand-in services the xtask binary exposes as a hidden
//! subcommand.

mod bastion;
pub mod daemon;
mod error;
mod keys;
mod net;
mod redis_server;
mod sandbox;
mod standin;
mod tls;

pub use bastion::{Bastion, BastionConfig};
pub use error::SandboxError;
pub use net::free_loopback_port;
pub use redis_server::{LocalRedis, REDIS_INSTALL_COMMAND};
pub use sandbox::{Sandbox, SandboxOptions, SANDBOX_ENV_FILE};
pub use standin::{run_standin, run_standin_until, Env, Role, CONSUMER_GROUP, STREAM};
pub use tls::{TlsFiles, OPENSSL_INSTALL_COMMAND};

/// The result type of this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
