//! Redis checks and the load generator: prove the connection through the tunnel (or direct),
//! name each failure with its fix, describe the server, and measure it.
//!
//! Connections are ours (TCP, then rustls verifying the endpoint's name while dialling the local
//! forward), so every failure can be told apart from the bytes seen: refused, timeout, the
//! bastion cannot reach the endpoint, TLS required or not spoken, certificate name or authority,
//! NOAUTH, WRONGPASS, NOPERM, not Redis at all. The protocol is ours too ([`resp`]): encoding
//! commands, framing replies (the benchmark's hot path), decoding them, and a small blocking
//! client for callers without a runtime.
//!
//! ```no_run
//! use mesh_probe::{NoTunnel, Target};
//!
//! let target = Target::new("127.0.0.1", 6379);
//! let report = mesh_probe::blocking(mesh_probe::ping(&target, &NoTunnel)).unwrap();
//! println!("PONG in {} ms", report.rtt_ms);
//! ```

pub mod bench;
mod check;
mod cli;
mod conn;
mod error;
pub mod resp;
mod target;
mod tls;

pub use check::{info, ping, ClusterNode, ClusterReport, InfoReport, PingReport, TlsState};
pub use cli::redis_cli;
pub use conn::{KnownChannelError, NoTunnel, TunnelDiagnosis};
pub use error::{Phase, ProbeError};
pub use target::{Route, Target, TlsMode, DEFAULT_TIMEOUT};

/// Runs `future` to completion on a fresh single-threaded runtime (for callers without one).
pub fn blocking<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future)
}
