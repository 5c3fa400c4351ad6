//! Bastion: the address resolves, its TCP port answers, the host key is known
//! and matches, authentication is accepted (no shell is opened), and every
//! forward's endpoint is reachable *from* the bastion (a channel opens), so
//! "cannot reach the bastion" and "the bastion cannot reach the cache" differ.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mesh_config::{Config, Forward, Secret};
use mesh_tunnel::{State, TunnelError, TunnelSpec};
use tokio::net::TcpStream;

use crate::checks::{needs_config, not_quick, stamp};
use crate::env::Env;
use crate::{Category, CategoryReport, Check, SharedSession};

pub(crate) async fn check(
    env: &Env<'_>,
    asked: Option<&Secret>,
) -> (CategoryReport, Option<SharedSession>) {
    let Some(config) = env.config else { return (needs_config(Category::Bastion), None) };
    if env.options.sandbox {
        let why = "not checked: `dev --sandbox` starts its own bastion";
        return (CategoryReport::skipped(Category::Bastion, why), None);
    }
    if !config.tunnel.enabled {
        let why = crate::checks::config::no_tunnel_reason(config);
        return (CategoryReport::skipped(Category::Bastion, why), None);
    }
    if let Some(tunnel) = &env.options.tunnel {
        return (reused(tunnel), Some(tunnel.clone()));
    }
    if env.options.quick {
        return (not_quick(Category::Bastion), None);
    }
    let Some(bastion) = &config.bastion else {
        let why = "not checked: BASTION_HOST_IP is not set (see Configuration)";
        return (CategoryReport::skipped(Category::Bastion, why), None);
    };
    let spec = spec(env, config, asked.or(bastion.passphrase.as_ref()));
    // The bastion as the tunnel dials it: the ~/.ssh/config alias (with its Includes) and the
    // defaults applied by the tunnel's own code, so the two never disagree.
    let target = match spec.resolve() {
        Ok(target) => target,
        Err(error) => {
            let fix = "fix the line named above in your ssh config, or set BASTION_HOST_IP to \
                       an address";
            let checks = vec![Check::fail("ssh config", error.to_string(), fix)];
            let summary = format!("{}: cannot read the ssh config", spec.host);
            return (CategoryReport::new(Category::Bastion, summary, checks), None);
        }
    };
    let (host, port, user) = (target.host.clone(), target.port, target.user.clone());
    let label = target.to_string();

    let mut checks = Vec::new();
    let reach = stamp(tcp(env, &host, port)).await;
    let reachable = reach.severity == crate::Severity::Ok;
    checks.push(reach);
    if !reachable {
        let summary = format!("{label}: cannot reach it");
        return (CategoryReport::new(Category::Bastion, summary, checks), None);
    }

    let started = Instant::now();
    let outcome = match mesh_tunnel::bind(spec.clone()).await {
        Ok(bound) => bound.start().await,
        Err(e) => Err(e),
    };
    let elapsed = started.elapsed();
    let (session_checks, session) = match outcome {
        Ok(tunnel) => (proven(&spec, &user), Some(Arc::new(tunnel))),
        Err(error) => (refused(&spec, &user, error), None),
    };
    checks.extend(session_checks.into_iter().map(|c| c.took(elapsed)));
    let summary = match &session {
        Some(_) => format!("{label}: key accepted, endpoints reachable"),
        None => format!("{label}: {}", first_problem(&checks)),
    };
    (CategoryReport::new(Category::Bastion, summary, checks), session)
}

/// The tunnel `dev` runs: its session is the one to judge, never a second one.
fn reused(tunnel: &SharedSession) -> CategoryReport {
    let status = tunnel.status();
    let rtt = status.keepalive_rtt_ms.map(|ms| format!(", rtt {ms:.1} ms")).unwrap_or_default();
    let check = match &status.state {
        State::Up => Check::ok("session", format!("{} (shared with dev){rtt}", status.bastion)),
        State::Reconnecting { reason, .. } => Check::fail(
            "session",
            format!("{}: session lost, reconnecting: {reason}", status.bastion),
            "it retries by itself; if it keeps failing, run `cargo xtask doctor` alone",
        ),
        State::Stopped => {
            Check::fail("session", "the tunnel is stopped", "restart `cargo xtask dev`")
        }
    };
    CategoryReport::new(Category::Bastion, check.message.clone(), vec![check])
}

/// The spec of the doctor's own short-lived tunnel: every forward, on free
/// local ports unless asked to bind the configured ones.
fn spec(env: &Env<'_>, config: &Config, passphrase: Option<&Secret>) -> TunnelSpec {
    let bastion = config.bastion.as_ref().expect("checked by the caller");
    let forwards: Vec<Forward> = config
        .forwards
        .iter()
        .map(|f| Forward {
            local_port: if env.options.bind_configured { f.local_port } else { 0 },
            ..f.clone()
        })
        .collect();
    let mut spec = TunnelSpec::new(bastion.host.clone(), forwards);
    // Left unset (0, empty), as `tunnel start` leaves them: a `Host` alias of ~/.ssh/config
    // then gives them, else 22 and ec2-user.
    if config.is_set("BASTION_PORT") {
        spec.port = bastion.port;
    }
    if config.is_set("BASTION_USER") {
        spec.user = bastion.user.clone();
    }
    spec.key_file = bastion.key_file.clone();
    spec.passphrase = passphrase.cloned();
    if !bastion.known_hosts.as_os_str().is_empty() {
        spec.known_hosts = bastion.known_hosts.clone();
    }
    spec.ssh_config = env.home().map(|h| h.join(".ssh/config"));
    spec.bind_addrs = if env.options.bind_configured {
        vec![config.tunnel.bind]
    } else {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    };
    spec.keepalive_interval = config.tunnel.keepalive_interval;
    spec.keepalive_count = config.tunnel.keepalive_count;
    spec.connect_timeout = env.options.timeout;
    spec.channel_open_timeout = env.options.timeout;
    spec
}

/// Name resolution and a TCP connect, each within the timeout.
async fn tcp(env: &Env<'_>, host: &str, port: u16) -> Check {
    let timeout = env.options.timeout;
    let secs = timeout.as_secs_f32();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                let message = format!("cannot resolve the bastion `{host}`: {e}");
                let fix =
                "check BASTION_HOST_IP (an address, a DNS name, or a Host alias of ~/.ssh/config)";
                return Check::fail("address", message, fix);
            }
            Err(_) => {
                let message = format!("resolving `{host}` took over {secs}s");
                return Check::fail("address", message, "check your DNS or VPN");
            }
        };
    let Some(&addr) = addrs.first() else {
        return Check::fail(
            "address",
            format!("`{host}` resolves to no address"),
            "check BASTION_HOST_IP",
        );
    };
    let fix =
        "check BASTION_HOST_IP and BASTION_PORT, your network or VPN, and that the bastion's \
               security group admits your address on that port";
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Check::ok("tcp", format!("{addr} answers")),
        Ok(Err(e)) => Check::fail("tcp", format!("cannot reach the bastion {addr}: {e}"), fix),
        Err(_) => Check::fail(
            "tcp",
            format!("no answer from the bastion {addr} within {secs}s (packets dropped?)"),
            fix,
        ),
    }
}

/// Every step passed.
fn proven(spec: &TunnelSpec, user: &str) -> Vec<Check> {
    let mut checks = vec![
        Check::ok("host key", format!("matches {}", spec.known_hosts.display())),
        Check::ok("authentication", format!("accepted as `{user}`")),
    ];
    checks.extend(spec.forwards.iter().map(|f| {
        Check::ok(
            format!("{} endpoint", f.name),
            format!("{}:{} reachable from the bastion", f.remote_host, f.remote_port),
        )
    }));
    checks
}

/// Which step refused, from the tunnel's own error; the steps before it passed.
fn refused(spec: &TunnelSpec, user: &str, error: TunnelError) -> Vec<Check> {
    let mut message = error.to_string();
    if let TunnelError::Timeout { .. } = error {
        // Here the bound is the doctor's own, not the tunnel's variable.
        message =
            message.replace("raise TUNNEL_CONNECT_TIMEOUT", "give the doctor a longer --timeout");
    }
    let fixed_in_message = "";
    let host_key_ok = Check::ok("host key", format!("matches {}", spec.known_hosts.display()));
    let auth_ok = Check::ok("authentication", format!("accepted as `{user}`"));
    match error {
        TunnelError::UnknownHostKey { .. }
        | TunnelError::HostKeyMismatch { .. }
        | TunnelError::HostKeyRevoked { .. }
        | TunnelError::KnownHostsUnreadable { .. }
        | TunnelError::KnownHostsWrite { .. } => {
            vec![Check::fail("host key", message, fixed_in_message)]
        }
        // The key is loaded before dialling: nothing was sent to the bastion.
        TunnelError::KeyNeedsPassphrase { .. }
        | TunnelError::KeyPermissions { .. }
        | TunnelError::KeyUnreadable { .. }
        | TunnelError::UnsupportedKeyFormat { .. }
        | TunnelError::WrongPassphrase { .. } => {
            vec![Check::fail("key", message, fixed_in_message)]
        }
        TunnelError::AuthRejected { .. } | TunnelError::NoCredentials { .. } => {
            vec![host_key_ok, Check::fail("authentication", message, fixed_in_message)]
        }
        TunnelError::EndpointUnreachable { ref forward, .. } => {
            let name = format!("{forward} endpoint");
            vec![host_key_ok, auth_ok, Check::fail(name, message, fixed_in_message)]
        }
        TunnelError::PortInUse { .. } | TunnelError::Bind { .. } => {
            vec![Check::fail("local listener", message, fixed_in_message)]
        }
        TunnelError::Timeout { what: "authentication", .. } => {
            vec![host_key_ok, Check::fail("authentication", message, fixed_in_message)]
        }
        _ => vec![Check::fail("ssh", message, fixed_in_message)],
    }
}

/// The summary's words for the first step that failed, true to what happened: a key that
/// could not be loaded means no SSH session was tried, so the bastion "refused" nothing.
fn first_problem(checks: &[Check]) -> String {
    let Some(check) = checks.iter().find(|c| c.severity >= crate::Severity::Warn) else {
        return String::new();
    };
    match check.name.as_str() {
        "key" => "no SSH session tried: the key cannot be used (see SSH key)".to_string(),
        "host key" => "host key not accepted".to_string(),
        "authentication" => "authentication refused".to_string(),
        "local listener" => "a local port cannot be bound".to_string(),
        "ssh" => "the SSH session failed".to_string(),
        endpoint => format!("{endpoint} not reachable from the bastion"),
    }
}
