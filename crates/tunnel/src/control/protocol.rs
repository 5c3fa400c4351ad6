//! The control protocol: one JSON object per line each way over the Unix socket.
//!
//! ```text
//! > {"cmd":"status"}
//! < {"reply":"status","pid":4242,"started_at":1700000000,"config":{...},"tunnel":{...}}
//! > {"cmd":"health"}
//! < {"reply":"health","ok":true,"latency_ms":1.9,"detail":"PONG"}
//! > {"cmd":"stop"}
//! < {"reply":"stopped","pid":4242}
//! ```

use serde::{Deserialize, Serialize};

use super::TunnelRecord;

/// A request to a running tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The engine's status with the process's pid, start time and configuration.
    Status,
    /// Shut the tunnel down gracefully; the reply comes once it is down.
    Stop,
    /// A Redis PING through the forward.
    Health,
}

/// A running tunnel's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Reply {
    Status(StatusReply),
    Stopped { pid: u32 },
    Health(HealthReply),
    Error { message: String },
}

/// The answer to `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub config: TunnelRecord,
    /// The engine's `Status` as it serializes (state, counters, last error,
    /// rtt, uptime); kept as JSON so this protocol does not pin its shape.
    pub tunnel: serde_json::Value,
}

impl StatusReply {
    /// The engine's state (`up`, `reconnecting`, `stopped`), when it says one.
    pub fn state(&self) -> Option<&str> {
        self.tunnel.get("state").and_then(|s| s.as_str())
    }
}

/// The answer to `health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    pub ok: bool,
    /// Round trip of the PING, when it was answered.
    pub latency_ms: Option<f64>,
    /// The reply (`PONG`) or what went wrong.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_tagged_json_lines() {
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"stop"}"#).unwrap(), Request::Stop);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());

        let reply =
            Reply::Health(HealthReply { ok: true, latency_ms: Some(1.5), detail: "PONG".into() });
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"reply":"health","ok":true,"latency_ms":1.5,"detail":"PONG"}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Stopped { pid: 7 }).unwrap(),
            r#"{"reply":"stopped","pid":7}"#
        );
    }
}
