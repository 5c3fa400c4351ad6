//! The tunnel's lifecycle around the engine: state directory, pid lock, control
//! socket (status, stop, health), stop by pid, detached start, logs, and the
//! service-manager units that keep a tunnel running.
//!
//! A running tunnel process holds an `flock` on its pid file for its whole life
//! and answers JSON lines on its control socket. Everything else (`status`,
//! `stop`, a second `start`) reads that state: a pid file nobody locks is what
//! a crashed run left behind, and is cleaned without signalling anyone.

mod client;
mod detach;
mod engine;
mod logs;
mod process;
mod protocol;
mod server;
mod state;
mod units;

use std::path::PathBuf;
use std::process::ExitStatus;

pub use client::request;
pub use detach::{key_is_encrypted, passphrase_for_child, start_detached, DetachRequest};
pub use engine::SharedTunnel;
pub use logs::{follow, tail_lines, LOG_ROTATE_BYTES};
pub use process::{is_ours, stop, SignalReason, StopOutcome, StopVia};
pub use protocol::{HealthReply, Reply, Request, StatusReply};
pub use server::{serve_control, ControlGuard, ControlTarget};
pub use state::{
    PidLock, RecordedForward, StateDir, StateRoot, TunnelId, TunnelOwner, TunnelRecord,
    MAX_SOCKET_PATH, PRODUCT_DIR,
};
pub use units::{launchd_plist, systemd_unit, ServiceSpec, LAUNCHD_LABEL, SYSTEMD_UNIT_NAME};

/// What can go wrong around a tunnel's state and control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "tunnel {id} is already running{}",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { id: TunnelId, pid: Option<u32> },

    #[error("pid file {} holds `{text}`, not a process id: remove it if no tunnel runs", path.display())]
    BadPidFile { path: PathBuf, text: String },

    #[error("cannot read tunnel record {}: {source}; remove the file if no tunnel runs", path.display())]
    BadRecord { path: PathBuf, source: serde_json::Error },

    #[error(
        "tunnel process exited ({status}) before every forward was verified: {reason}\n(log: {})",
        log.display()
    )]
    ChildFailed { status: ExitStatus, log: PathBuf, reason: String },

    #[error("cannot connect to control socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: std::io::Error },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("no state directory: set XTASK_STATE_DIR, XDG_STATE_HOME or HOME")]
    NoStateRoot,

    #[error(
        "pid {pid} in {} runs {exe}, not this tool: not signalling it; remove the file if no tunnel runs",
        pid_file.display()
    )]
    NotOurProcess { pid: u32, exe: String, pid_file: PathBuf },

    #[error("{}", owned_by_dev(id, *pid))]
    OwnedByDev { id: TunnelId, pid: u32 },

    #[error("control socket {} sent an unexpected reply: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },

    #[error(
        "control socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets: \
         set XDG_RUNTIME_DIR or a shorter XTASK_STATE_DIR",
        path.display()
    )]
    SocketPathTooLong { path: PathBuf, len: usize },

    #[error("the tunnel on control socket {} refused to stop: {message}", path.display())]
    StopRefused { path: PathBuf, message: String },

    #[error("cannot start the tunnel process {}: {source}", program.display())]
    Spawn { program: PathBuf, source: std::io::Error },

    #[error(
        "tunnel process (pid {pid}) did not verify its forwards within {waited_s} s; it was stopped; log {}:\n{log_tail}",
        log.display()
    )]
    StartTimeout { pid: u32, waited_s: u64, log: PathBuf, log_tail: String },

    #[error("pid {pid} did not exit after SIGKILL; check it with `ps -p {pid}`")]
    Unkillable { pid: u32 },

    #[error("control socket {} did not answer within {waited_ms} ms", path.display())]
    Timeout { path: PathBuf, waited_ms: u128 },
}

/// What `stop` says of a tunnel `dev` runs in its own process: the control
/// socket's refusal and [`ControlError::OwnedByDev`] use the same words.
pub fn owned_by_dev(id: &dyn std::fmt::Display, pid: u32) -> String {
    format!("tunnel {id} belongs to `cargo xtask dev` (pid {pid}): stop dev with Ctrl+C there")
}
