//! What a running tunnel reports: its state, per-forward counters and the last errors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The tunnel's life cycle, as `watch()` publishes it and `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Every forward is bound and the session is authenticated.
    Up,
    /// The session died; listeners stay bound while we retry.
    Reconnecting {
        /// 1 for the first retry after the loss.
        attempt: u32,
        /// When the session was lost, in milliseconds since the Unix epoch.
        since_unix_ms: u64,
        /// The delay before this attempt, in milliseconds.
        next_retry_in_ms: u64,
        /// Why the session was lost, or why the last attempt failed.
        reason: String,
    },
    Stopped,
}

/// One forward's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub name: String,
    pub local_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
    /// The addresses actually bound (IPv6 loopback is absent where the system lacks it).
    pub bound: Vec<SocketAddr>,
    /// From the local clients to the endpoint.
    pub bytes_up: u64,
    /// From the endpoint to the local clients.
    pub bytes_down: u64,
    pub active_connections: u64,
    pub total_connections: u64,
    /// Connections closed without reaching the endpoint (no session, channel refused).
    pub failed_connections: u64,
    /// Why the last channel to the endpoint could not be opened, so a client that saw
    /// end-of-stream can be told.
    pub last_channel_error: Option<ChannelError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelError {
    pub at_unix_ms: u64,
    pub message: String,
}

/// A snapshot of a running tunnel, for `tunnel status` and `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub state: State,
    /// `user@host:port` as dialled.
    pub bastion: String,
    pub pid: u32,
    /// Seconds since the tunnel started.
    pub uptime_secs: u64,
    /// Seconds since the current session was established; `None` while down.
    pub session_secs: Option<u64>,
    /// Sessions re-established after a loss.
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// The last keepalive round trip to the bastion, in milliseconds.
    pub keepalive_rtt_ms: Option<f64>,
    pub forwards: Vec<ForwardStatus>,
}

/// Live counters of one forward, shared by its accept loop and connections.
#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub failed: AtomicU64,
    pub last_channel_error: Mutex<Option<ChannelError>>,
}

impl Counters {
    pub fn channel_failed(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_channel_error.lock().unwrap() =
            Some(ChannelError { at_unix_ms: unix_ms(), message });
    }
}

/// Decrements the active count when a connection ends, however it ends.
pub(crate) struct ActiveGuard<'a>(pub &'a Counters);

impl<'a> ActiveGuard<'a> {
    pub fn new(counters: &'a Counters) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(counters)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
