//! The engine's [`Tunnel`] behind the control socket: status, a Redis PING
//! through the forward, and a shutdown any request or signal may trigger.

use std::net::SocketAddr;

use mesh_config::Secret;
use tokio::sync::RwLock;

use super::{ControlTarget, HealthReply};
use crate::{redis_ping, Tunnel};

/// A running tunnel shared by the control socket's connections and its
/// owner. `shutdown` takes the tunnel out, so status afterwards says `stopped`.
pub struct SharedTunnel {
    /// `None` once shut down. A health check holds the read lock for at most
    /// the PING's timeout; shutdown waits for it.
    tunnel: RwLock<Option<Tunnel>>,
    /// For the Redis AUTH of the health check: ACL user and password.
    redis_username: Option<String>,
    redis_password: Option<Secret>,
}

impl SharedTunnel {
    pub fn new(tunnel: Tunnel) -> Self {
        SharedTunnel {
            tunnel: RwLock::new(Some(tunnel)),
            redis_username: None,
            redis_password: None,
        }
    }

    /// Credentials the health check sends before PING.
    pub fn with_redis_auth(mut self, username: Option<String>, password: Option<Secret>) -> Self {
        self.redis_username = username;
        self.redis_password = password;
        self
    }

    /// Shuts the tunnel down gracefully; later calls do nothing.
    pub async fn shutdown_now(&self) {
        let tunnel = self.tunnel.write().await.take();
        if let Some(tunnel) = tunnel {
            tunnel.shutdown().await;
        }
    }

    /// The local address of the Redis forward (named `redis`), IPv4 first.
    fn redis_addr(tunnel: &Tunnel) -> Option<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = tunnel
            .local_addrs()
            .into_iter()
            .filter(|(name, _)| name == "redis")
            .map(|(_, addr)| addr)
            .collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.into_iter().next()
    }
}

impl ControlTarget for SharedTunnel {
    async fn status(&self) -> serde_json::Value {
        match &*self.tunnel.read().await {
            Some(tunnel) => serde_json::to_value(tunnel.status()).unwrap_or_else(
                |e| serde_json::json!({ "state": "unknown", "last_error": e.to_string() }),
            ),
            None => serde_json::json!({ "state": "stopped" }),
        }
    }

    async fn health(&self) -> HealthReply {
        let guard = self.tunnel.read().await;
        let Some(tunnel) = &*guard else {
            return HealthReply {
                ok: false,
                latency_ms: None,
                detail: "the tunnel is stopping".into(),
            };
        };
        let Some(addr) = Self::redis_addr(tunnel) else {
            return HealthReply {
                ok: true,
                latency_ms: None,
                detail: "no redis forward to check".into(),
            };
        };
        match redis_ping(addr, self.redis_username.as_deref(), self.redis_password.as_ref()).await {
            Ok(rtt) => HealthReply {
                ok: true,
                latency_ms: Some(rtt.as_secs_f64() * 1000.0),
                detail: "PONG".into(),
            },
            Err(e) => HealthReply { ok: false, latency_ms: None, detail: e.to_string() },
        }
    }

    async fn shutdown(&self) {
        self.shutdown_now().await;
    }
}
