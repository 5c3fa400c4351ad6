//! Tunnel: each forward's local port is free, or held by our running tunnel
//! (healthy or not, as its control socket says), or by another process (named).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use mesh_tunnel::control::{self, Reply, Request, StateDir, StateRoot};
use mesh_tunnel::State;

use crate::checks::needs_config;
use crate::env::Env;
use crate::{Category, CategoryReport, Check};

/// Our tunnel, found running on the Redis forward's port.
#[derive(Clone, Debug)]
pub(crate) struct RunningTunnel {
    /// Where Redis answers through it.
    pub addr: SocketAddr,
    /// Who runs it: `this process` or `pid 4242`.
    pub owner: String,
}

pub(crate) async fn check(env: &Env<'_>) -> (CategoryReport, Option<RunningTunnel>) {
    let Some(config) = env.config else { return (needs_config(Category::Tunnel), None) };
    if !config.tunnel.enabled {
        let why = crate::checks::config::no_tunnel_reason(config);
        return (CategoryReport::skipped(Category::Tunnel, why), None);
    }
    if let Some(tunnel) = &env.options.tunnel {
        return in_process(tunnel);
    }
    let mut checks = Vec::new();
    let mut running = None;
    for forward in &config.forwards {
        let started = Instant::now();
        let addr = SocketAddr::new(config.tunnel.bind, forward.local_port);
        let label = format!("{} port {}", forward.name, forward.local_port);
        let check = match TcpListener::bind(addr) {
            Ok(_) => Check::ok(label, format!("{addr} is free")),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let (check, ours) = taken(env, &label, addr).await;
                if forward.name == "redis" && ours {
                    running = Some(RunningTunnel { addr, owner: check.message.clone() });
                }
                check
            }
            Err(e) => {
                let message = format!("cannot bind {addr}: {e}");
                let fix = "set TUNNEL_BIND_ADDRESS to a local address (127.0.0.1 is the default)";
                Check::fail(label, message, fix)
            }
        };
        checks.push(check.took(started.elapsed()));
    }
    let summary = match (&running, checks.iter().all(|c| c.severity == crate::Severity::Ok)) {
        (Some(r), _) => format!("our tunnel is running ({})", r.owner),
        (None, true) => "local ports free".to_string(),
        (None, false) => "a local port is taken".to_string(),
    };
    (CategoryReport::new(Category::Tunnel, summary, checks), running)
}

/// The tunnel `dev` runs in this very process.
fn in_process(tunnel: &crate::SharedSession) -> (CategoryReport, Option<RunningTunnel>) {
    let status = tunnel.status();
    let check = match &status.state {
        State::Up => Check::ok("tunnel", format!("up in this process, bastion {}", status.bastion)),
        State::Reconnecting { attempt, reason, .. } => Check::warn(
            "tunnel",
            format!("reconnecting (attempt {attempt}): {reason}"),
            "it retries by itself; see the Bastion line for why",
        ),
        State::Stopped => Check::warn("tunnel", "stopped", "restart `cargo xtask dev`"),
    };
    let redis = tunnel.local_addrs().into_iter().find(|(name, _)| name == "redis");
    let running = redis.map(|(_, addr)| RunningTunnel { addr, owner: "this process".into() });
    (CategoryReport::new(Category::Tunnel, check.message.clone(), vec![check]), running)
}

/// A taken port: ours (and how it is), or someone else's (who).
async fn taken(env: &Env<'_>, label: &str, addr: SocketAddr) -> (Check, bool) {
    let holder = holder(addr.port());
    if let Some(state) = our_tunnel(env, addr.port(), holder.as_ref().map(|h| h.0)) {
        return (our_status(env, label, &state).await, true);
    }
    let who = match &holder {
        Some((pid, comm)) => format!("{comm} (pid {pid})"),
        None => "another process (not visible to this user)".to_string(),
    };
    let message = format!("{addr} is held by {who}; the tunnel cannot listen there");
    let fix = match &holder {
        Some((pid, _)) => format!(
            "stop it (`kill {pid}`), or set REDIS_TUNNEL_PORT (or the forward's port) to a free port"
        ),
        None => "find it with `ss -ltnp` and stop it, or choose another local port".to_string(),
    };
    (Check::fail(label, message, fix), false)
}

/// The state directory of our tunnel serving `port`, when one is running.
fn our_tunnel(env: &Env<'_>, port: u16, holder_pid: Option<u32>) -> Option<StateDir> {
    let config = env.config?;
    let root = StateRoot { dir: config.state_root.clone(), runtime_dir: None };
    root.list().ok()?.into_iter().find(|state| {
        let Ok(record) = state.read_record() else { return false };
        let serves = record.forwards.iter().any(|f| f.local_port == port);
        let alive = holder_pid == Some(record.pid) || state.is_locked().unwrap_or(false);
        serves && alive
    })
}

async fn our_status(env: &Env<'_>, label: &str, state: &StateDir) -> Check {
    let pid = state.read_pid().ok().flatten().map(|p| format!("pid {p}")).unwrap_or_default();
    let timeout = env.options.timeout;
    match control::request(&state.socket, Request::Status, timeout).await {
        Ok(Reply::Status(status)) => match status.state() {
            Some("up") => Check::ok(label, format!("held by our tunnel ({pid}), up")),
            other => Check::warn(
                label,
                format!("held by our tunnel ({pid}), {}", other.unwrap_or("in an unknown state")),
                "it reconnects by itself; `cargo xtask tunnel status` says why, `tunnel logs` shows more",
            ),
        },
        Ok(other) => Check::warn(
            label,
            format!("held by our tunnel ({pid}), which answered status with {other:?}"),
            "restart it: `cargo xtask tunnel restart`",
        ),
        Err(e) => Check::warn(
            label,
            format!("held by our tunnel ({pid}), which does not answer: {e}"),
            "restart it: `cargo xtask tunnel restart`",
        ),
    }
}

/// The process listening on a TCP port, as `/proc` tells: (pid, command name).
/// `None` where `/proc` is absent or the socket belongs to another user.
pub(crate) fn holder(port: u16) -> Option<(u32, String)> {
    mesh_tunnel::port_holder(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_the_listening_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _) = holder(port).expect("/proc names the holder");
        assert_eq!(pid, std::process::id());
    }
}
