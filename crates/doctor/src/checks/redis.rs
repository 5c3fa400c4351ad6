//! Redis: PING with AUTH through the running tunnel, or through the doctor's
//! own short-lived one, and what the answer says (TLS required, wrong password).

use std::time::Instant;

use mesh_probe::{InfoReport, NoTunnel, Target};

use crate::checks::port::RunningTunnel;
use crate::checks::{needs_config, not_quick};
use crate::env::Env;
use crate::{Category, CategoryReport, Check, SharedSession};

pub(crate) async fn check(
    env: &Env<'_>,
    running: Option<RunningTunnel>,
    session: Option<SharedSession>,
) -> CategoryReport {
    let Some(config) = env.config else { return needs_config(Category::Redis) };
    if env.options.sandbox {
        let why = "not checked: `dev --sandbox` starts its own Redis";
        return CategoryReport::skipped(Category::Redis, why);
    }
    if env.options.quick {
        return not_quick(Category::Redis);
    }
    let Some(redis) = &config.redis else {
        let why = "not checked: ELASTICACHE_ENDPOINT is not set (see Configuration)";
        return CategoryReport::skipped(Category::Redis, why);
    };
    let through_session = session.as_ref().and_then(|tunnel| {
        let addr = tunnel.local_addrs().into_iter().find(|(name, _)| name == "redis")?.1;
        Some((Some(addr), "through the doctor's tunnel".to_string()))
    });
    let (addr, route) = match (running, through_session) {
        (Some(tunnel), _) => (Some(tunnel.addr), format!("through our tunnel ({})", tunnel.owner)),
        (None, Some(found)) => found,
        (None, None) if crate::checks::config::tunnel_turned_off(config) => {
            (None, "directly (no tunnel)".to_string())
        }
        (None, None) => {
            let why = "not checked: no tunnel to reach it through (see Bastion)";
            return CategoryReport::skipped(Category::Redis, why);
        }
    };
    let mut target = match addr {
        None => Target::from_config(redis, config.tunnel.bind, true, false),
        Some(addr) => Target::from_config(redis, config.tunnel.bind, false, false).via(addr),
    };
    target.timeout = env.options.timeout;
    let started = Instant::now();
    let checks = match mesh_probe::info(&target, &NoTunnel).await {
        Ok(info) => described(&info, &route, redis.password.is_some()),
        Err(error) => vec![Check::fail("ping", format!("{error} ({route})"), "")],
    };
    let checks: Vec<Check> = checks.into_iter().map(|c| c.took(started.elapsed())).collect();
    let summary = if checks.iter().all(|c| c.severity == crate::Severity::Ok) {
        format!("{}:{} answers {route}", redis.host, redis.port)
    } else if checks[0].severity == crate::Severity::Ok {
        format!("{}:{} answers {route}, with warnings", redis.host, redis.port)
    } else {
        format!("{}:{} does not answer {route}", redis.host, redis.port)
    };
    CategoryReport::new(Category::Redis, summary, checks)
}

/// What a successful INFO says: the round trip, the server, TLS, and any warnings
/// (a cluster whose nodes the forward cannot reach, a secret with whitespace).
fn described(info: &InfoReport, route: &str, auth: bool) -> Vec<Check> {
    let auth = if auth { ", AUTH accepted" } else { "" };
    let version = info.version.as_deref().unwrap_or("of unknown version");
    let role = info.role.as_deref().map(|r| format!(", {r}")).unwrap_or_default();
    let mut checks = vec![
        Check::ok("ping", format!("PONG in {:.1} ms {route}{auth}", info.ping_rtt_ms)),
        Check::ok("server", format!("{} {version} ({}{role})", info.server, info.mode)),
        Check::ok("tls", info.tls.describe(&info.endpoint)),
    ];
    if let Some(cluster) = info.cluster.as_ref().filter(|c| c.unreachable > 0) {
        let message = format!(
            "cluster mode: {} of {} announced nodes are not reachable through the forward, so \
             MOVED replies will fail",
            cluster.unreachable,
            cluster.nodes.len()
        );
        let fix = "use the cluster's configuration endpoint with a client that remaps \
                   addresses, or forward each node (TUNNEL_EXTRA_FORWARDS)";
        checks.push(Check::warn("cluster", message, fix));
    }
    checks.extend(info.warnings.iter().map(|w| Check::warn("warning", w.clone(), "")));
    checks
}
