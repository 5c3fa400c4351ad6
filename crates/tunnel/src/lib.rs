//! The SSH forwarding engine: local listeners carried through a bastion to in-VPC
//! endpoints over russh, verified, authenticated, kept alive and reconnected.
//!
//! `bind` binds every listener first (a taken port fails before any network wait);
//! `BoundTunnel::start` connects, verifies the host key against `known_hosts`,
//! authenticates and proves each forward's endpoint; `Tunnel` then serves connections,
//! reconnects forever when the session dies, and reports `status`.
//!
//! A process that only runs a tunnel should use a current-thread tokio runtime: it
//! measured less CPU per request than the multi-thread one at every load (BENCH.md). A
//! program with a multi-thread runtime runs it on its own thread: [`start_on_own_thread`].

mod auth;
pub mod control;
mod error;
mod forward;
mod known_hosts;
mod listen;
mod ping;
mod quickack;
mod session;
mod spec;
pub mod ssh_config;
mod status;
mod thread;
mod tunnel;

pub use error::{PingError, TunnelError};
pub use listen::port_holder;
pub use ping::redis_ping;
pub use spec::{Target, TunnelSpec};
pub use status::{ChannelError, ForwardStatus, State, Status};
pub use thread::start_on_own_thread;
pub use tunnel::{bind, BoundTunnel, Starting, Tunnel};

pub use mesh_config::{Forward, Secret};
