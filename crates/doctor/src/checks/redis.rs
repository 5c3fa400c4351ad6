//! Redis: PING with AUTH through the running tunnel, or through the doctor's
//! own short-lived one, and what the answer says (TLS required, wrong password).

use std::net::SocketAddr;
use std::time::Instant;

use mesh_tunnel::PingError;

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
        Some((addr, "through the doctor's tunnel".to_string()))
    });
    let (addr, route) = match (running, through_session) {
        (Some(tunnel), _) => (tunnel.addr, format!("through our tunnel ({})", tunnel.owner)),
        (None, Some(found)) => found,
        (None, None) if crate::checks::config::tunnel_turned_off(config) => {
            let Some(addr) = resolve(&redis.host, redis.port).await else {
                let message = format!("cannot resolve the endpoint {}", redis.host);
                let check = Check::fail("address", message, "check ELASTICACHE_ENDPOINT");
                return CategoryReport::new(Category::Redis, "cannot resolve", vec![check]);
            };
            (addr, "directly (no tunnel)".to_string())
        }
        (None, None) => {
            let why = "not checked: no tunnel to reach it through (see Bastion)";
            return CategoryReport::skipped(Category::Redis, why);
        }
    };
    if redis.tls {
        // FIXME: the TLS handshake (with the endpoint's name) belongs to the probe
        // crate, which is not integrated yet; until then a TLS endpoint is not pinged
        // and a wrong certificate or server name shows up only in `dev`.
        let check = Check::warn(
            "ping",
            format!("TLS is on; the doctor cannot ping a TLS endpoint yet ({route})"),
            "run `cargo xtask redis ping` to check it",
        );
        return CategoryReport::new(Category::Redis, check.message.clone(), vec![check]);
    }
    let started = Instant::now();
    let password = redis.password.as_ref();
    let check = match mesh_tunnel::redis_ping(addr, redis.username.as_deref(), password).await {
        Ok(rtt) => Check::ok(
            "ping",
            format!(
                "PONG in {:.1} ms {route}{}",
                rtt.as_secs_f64() * 1000.0,
                auth_note(password.is_some())
            ),
        ),
        Err(error) => classify(error, &route),
    };
    let check = check.took(started.elapsed());
    let summary = if check.severity == crate::Severity::Ok {
        format!("{}:{} answers {route}", redis.host, redis.port)
    } else {
        format!("{}:{} does not answer", redis.host, redis.port)
    };
    CategoryReport::new(Category::Redis, summary, vec![check])
}

fn auth_note(auth: bool) -> &'static str {
    if auth {
        ", AUTH accepted"
    } else {
        ""
    }
}

fn classify(error: PingError, route: &str) -> Check {
    let message = format!("{error} ({route})");
    let fix = match &error {
        PingError::Closed { .. } => {
            "if the endpoint requires TLS (ElastiCache Serverless always does), set \
             REDIS_TLS_ENABLED=true; otherwise see the Bastion line"
        }
        PingError::Auth { .. } => {
            "check REDIS_USERNAME and REDIS_PASSWORD (a trailing newline counts)"
        }
        PingError::Reply { reply, .. } if reply.contains("NOAUTH") => {
            "the server wants a password: set REDIS_PASSWORD"
        }
        PingError::Timeout { .. } => "check the endpoint's security group and that the cache is up",
        _ => "check the tunnel (`cargo xtask tunnel status`) and the endpoint",
    };
    Check::fail("ping", message, fix)
}

async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}
