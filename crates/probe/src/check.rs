//! `ping` and `info`: prove the connection, then describe the server (version, mode, role,
//! memory, keys) and, in cluster mode, which announced nodes the forward can reach.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conn::{Session, TunnelDiagnosis};
use crate::error::ProbeError;
use crate::resp::Value;
use crate::target::{Route, Target, TlsMode};

/// How TLS went, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsState {
    Off,
    /// The certificate was verified as the endpoint's name.
    Verified,
    /// `--insecure`: encrypted, but the certificate was not checked.
    NotVerified,
}

impl TlsState {
    pub(crate) fn of(target: &Target) -> TlsState {
        match target.tls {
            TlsMode::Off => TlsState::Off,
            TlsMode::Verify { .. } => TlsState::Verified,
            TlsMode::Insecure => TlsState::NotVerified,
        }
    }

    /// One phrase for people: `off`, `verified as cache.example.com`, `NOT verified (--insecure)`.
    pub fn describe(&self, host: &str) -> String {
        match self {
            TlsState::Off => "off".to_string(),
            TlsState::Verified => format!("on, certificate verified as {host}"),
            TlsState::NotVerified => "on, certificate NOT verified (--insecure)".to_string(),
        }
    }
}

/// The result of `redis ping`.
#[derive(Clone, Debug, Serialize)]
pub struct PingReport {
    /// `host:port` of the endpoint.
    pub endpoint: String,
    /// The address dialled: the forward, or the endpoint itself.
    pub via: String,
    pub tls: TlsState,
    /// The ACL user, when not the default one.
    pub user: Option<String>,
    /// The PING round trip on the proven connection, in milliseconds.
    pub rtt_ms: f64,
    /// Things that work but deserve attention (a password with whitespace, `--insecure`).
    pub warnings: Vec<String>,
}

/// Connects, authenticates and PINGs.
pub async fn ping(target: &Target, tunnel: &dyn TunnelDiagnosis) -> Result<PingReport, ProbeError> {
    let session = Session::open(target, tunnel).await?;
    Ok(PingReport {
        endpoint: target.endpoint(),
        via: via(target),
        tls: TlsState::of(target),
        user: target.username.clone(),
        rtt_ms: ms(session.first_rtt),
        warnings: target.warnings(),
    })
}

fn via(target: &Target) -> String {
    match &target.route {
        Route::Direct => "direct".to_string(),
        Route::Forward(addr) => addr.to_string(),
    }
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The result of `redis info`.
#[derive(Clone, Debug, Serialize)]
pub struct InfoReport {
    pub endpoint: String,
    pub via: String,
    pub tls: TlsState,
    pub user: Option<String>,
    /// `redis` or `valkey`.
    pub server: String,
    pub version: Option<String>,
    /// `standalone`, `cluster`, `sentinel`, or `elasticache-serverless`.
    pub mode: String,
    /// `master` or `slave`, as Redis says.
    pub role: Option<String>,
    pub connected_clients: Option<u64>,
    pub used_memory: Option<String>,
    /// `0` when unlimited.
    pub maxmemory: Option<String>,
    pub maxmemory_policy: Option<String>,
    /// Keys over all databases.
    pub keys: u64,
    /// The median of a few PINGs, in milliseconds.
    pub ping_rtt_ms: f64,
    /// Present in cluster mode.
    pub cluster: Option<ClusterReport>,
    pub warnings: Vec<String>,
}

/// The nodes a cluster announces and whether we can reach them.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub nodes: Vec<ClusterNode>,
    /// How many nodes cannot be reached from here.
    pub unreachable: usize,
}

/// One node as `CLUSTER SLOTS` announces it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterNode {
    pub host: String,
    pub port: u16,
    /// `primary` or `replica`.
    pub role: String,
    /// Slot ranges it serves, e.g. `0-5460`.
    pub slots: Vec<String>,
    pub reachable: bool,
    /// Why it is or is not reachable, for people.
    pub note: String,
}

/// Connects and describes the server.
pub async fn info(target: &Target, tunnel: &dyn TunnelDiagnosis) -> Result<InfoReport, ProbeError> {
    let mut session = Session::open(target, tunnel).await?;
    let reply = session.call(&[b"INFO"], "INFO").await?;
    let text = reply.text().ok_or_else(|| unexpected(&session, "INFO", &reply))?;
    let fields = parse_info(&text);
    let get = |name: &str| fields.get(name).cloned();

    let ping_rtt_ms = ping_median(&mut session, 5).await?;
    let mut mode = get("redis_mode").unwrap_or_else(|| "standalone".to_string());
    let mut warnings = target.warnings();
    if is_serverless(&target.host) {
        mode = "elasticache-serverless".to_string();
    }
    let cluster = if get("cluster_enabled").as_deref() == Some("1") {
        let report = cluster_nodes(&mut session).await?;
        if report.unreachable > 0 {
            warnings.push(format!(
                "cluster mode: {} of {} announced nodes cannot be reached from here; a MOVED \
                 redirect to them will fail (remapping them through the tunnel is not built yet)",
                report.unreachable,
                report.nodes.len()
            ));
        }
        Some(report)
    } else {
        None
    };

    Ok(InfoReport {
        endpoint: target.endpoint(),
        via: via(target),
        tls: TlsState::of(target),
        user: target.username.clone(),
        server: get("server_name").unwrap_or_else(|| "redis".to_string()),
        version: get("valkey_version").or_else(|| get("redis_version")),
        mode,
        role: get("role"),
        connected_clients: get("connected_clients").and_then(|v| v.parse().ok()),
        used_memory: get("used_memory_human"),
        maxmemory: get("maxmemory_human"),
        maxmemory_policy: get("maxmemory_policy"),
        keys: count_keys(&fields),
        ping_rtt_ms,
        cluster,
        warnings,
    })
}

/// ElastiCache Serverless endpoints carry `.serverless.` in their name; INFO does not say.
fn is_serverless(host: &str) -> bool {
    host.contains(".serverless.") && host.ends_with(".amazonaws.com")
}

/// A reply of the wrong shape for `command`: whatever answered is not the Redis we know.
pub(crate) fn unexpected(session: &Session<'_>, command: &str, reply: &Value) -> ProbeError {
    ProbeError::NotRedis {
        target: session.target.describe(),
        detail: format!("an unexpected reply to {command} ({})", describe(reply)),
    }
}

/// The kind of a reply, for messages.
fn describe(reply: &Value) -> &'static str {
    match reply {
        Value::Simple(_) => "a simple string",
        Value::Error(_) => "an error",
        Value::Integer(_) => "an integer",
        Value::Bulk(_) => "a bulk string",
        Value::Null => "null",
        Value::Array(_) => "an array",
    }
}

/// `name:value` lines of INFO, section headers and blanks skipped.
pub(crate) fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sums `keys=N` over the `dbN:` lines of INFO keyspace.
fn count_keys(fields: &BTreeMap<String, String>) -> u64 {
    fields
        .iter()
        .filter(|(name, _)| name.starts_with("db") && name[2..].chars().all(|c| c.is_ascii_digit()))
        .filter_map(|(_, value)| value.split(',').find_map(|kv| kv.strip_prefix("keys=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

async fn ping_median(session: &mut Session<'_>, count: usize) -> Result<f64, ProbeError> {
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        session.call(&[b"PING"], "PING").await?;
        rtts.push(started.elapsed());
    }
    rtts.sort();
    Ok(ms(rtts[rtts.len() / 2]))
}

/// Lists the nodes `CLUSTER SLOTS` announces and judges whether each is reachable: through the
/// forward only the endpoint itself is; direct, we try to connect.
///
/// FIXME: `CLUSTER SHARDS` (Redis 7) also gives each node's hostname; with only SLOTS, a cluster
/// that announces hostnames rather than addresses is compared by what SLOTS puts first.
async fn cluster_nodes(session: &mut Session<'_>) -> Result<ClusterReport, ProbeError> {
    let reply = session.call(&[b"CLUSTER", b"SLOTS"], "CLUSTER SLOTS").await?;
    let Value::Array(ranges) = reply else {
        return Err(unexpected(session, "CLUSTER SLOTS", &reply));
    };
    let mut nodes: Vec<ClusterNode> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(start), Some(end)) = (int(parts.first()), int(parts.get(1))) else { continue };
        let slots = if start == end { start.to_string() } else { format!("{start}-{end}") };
        for (i, node) in parts.iter().skip(2).enumerate() {
            let Value::Array(node) = node else { continue };
            let (Some(host), Some(port)) = (text(node.first()), int(node.get(1))) else { continue };
            let role = if i == 0 { "primary" } else { "replica" };
            let port = u16::try_from(port).unwrap_or(0);
            match nodes.iter_mut().find(|n| n.host == host && n.port == port) {
                Some(known) => known.slots.push(slots.clone()),
                None => nodes.push(ClusterNode {
                    host,
                    port,
                    role: role.to_string(),
                    slots: vec![slots.clone()],
                    reachable: false,
                    note: String::new(),
                }),
            }
        }
    }
    let target = session.target.clone();
    for node in &mut nodes {
        (node.reachable, node.note) = reachability(&target, &node.host, node.port).await;
    }
    let unreachable = nodes.iter().filter(|n| !n.reachable).count();
    Ok(ClusterReport { nodes, unreachable })
}

async fn reachability(target: &Target, host: &str, port: u16) -> (bool, String) {
    // An empty or `?` address means "the node you are talking to" (it does not know its own).
    if host.is_empty() || host == "?" {
        return (true, "the node answering this connection".to_string());
    }
    let is_endpoint = host.eq_ignore_ascii_case(&target.host) && port == target.port;
    match &target.route {
        Route::Forward(addr) if is_endpoint => (true, format!("the endpoint, through {addr}")),
        Route::Forward(_) => (
            false,
            "an in-VPC address the forward does not carry: a redirect here fails".to_string(),
        ),
        Route::Direct => {
            let connect = tokio::net::TcpStream::connect((host, port));
            match tokio::time::timeout(target.timeout.min(Duration::from_secs(2)), connect).await {
                Ok(Ok(_)) => (true, "connects directly".to_string()),
                Ok(Err(err)) => (false, format!("cannot connect: {err}")),
                Err(_) => (false, "connect timed out".to_string()),
            }
        }
    }
}

fn int(value: Option<&Value>) -> Option<i64> {
    value?.int()
}

fn text(value: Option<&Value>) -> Option<String> {
    value?.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keys_over_every_database() {
        let fields = parse_info(
            "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb12:keys=4,expires=1,avg_ttl=9\r\n\
             dbfilename:dump.rdb\r\n",
        );
        assert_eq!(count_keys(&fields), 7);
    }

    #[test]
    fn tells_serverless_by_the_endpoint_name() {
        assert!(is_serverless("mesh-abc123.serverless.use1.cache.amazonaws.com"));
        assert!(!is_serverless("mesh.abc123.ng.0001.use1.cache.amazonaws.com"));
        assert!(!is_serverless("serverless.example.com"));
    }
}
