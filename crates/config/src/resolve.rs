//! Turning raw layered values into typed settings, with an error or a warning
//! for every value that is wrong or risky.

use crate::vars::{self, Kind};
use crate::{Config, ConfigError, Finding, Forward, Origin, Secret, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach and log in to the bastion.
#[derive(Clone, Debug, Serialize)]
pub struct Bastion {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_file: Option<PathBuf>,
    pub passphrase: Option<Secret>,
    pub known_hosts: PathBuf,
}

/// The Redis endpoint as seen from inside the VPC, and how to talk to it.
#[derive(Clone, Debug, Serialize)]
pub struct Redis {
    /// The endpoint's name: the bastion resolves it, TLS verifies it.
    pub host: String,
    pub port: u16,
    /// The local port of the forward.
    pub local_port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: bool,
    pub ca_cert: Option<PathBuf>,
}

/// Settings of the tunnel itself.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelSettings {
    /// Whether Redis is reached through the bastion at all.
    pub enabled: bool,
    pub bind: IpAddr,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    /// Bounds the TCP connect, SSH handshake and authentication with the bastion.
    pub connect_timeout: Duration,
}

/// Collects findings while typed values are read.
struct Reader<'a> {
    values: &'a BTreeMap<String, Value>,
    home: Option<String>,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

const DOCKER_ONLY_HOSTS: &[&str] = &["redis", "database", "postgres", "db", "localstack", "cache"];

pub(crate) fn resolve(
    values: BTreeMap<String, Value>,
    shell: BTreeMap<String, String>,
    files: Vec<PathBuf>,
    warnings: Vec<Finding>,
) -> Result<Config, ConfigError> {
    let mut r =
        Reader { values: &values, home: shell.get("HOME").cloned(), errors: vec![], warnings };

    let redis = r.redis();
    let bastion = r.bastion();
    let tunnel = TunnelSettings {
        enabled: r.bool("USE_SSH_TUNNEL_FOR_REDIS").unwrap_or(bastion.is_some()),
        bind: r.bind_address(),
        keepalive_interval: Duration::from_secs(r.number("TUNNEL_KEEPALIVE_INTERVAL", 1)),
        keepalive_count: r.number("TUNNEL_KEEPALIVE_COUNT", 1) as u32,
        connect_timeout: Duration::from_secs(r.number("TUNNEL_CONNECT_TIMEOUT", 1)),
    };
    let forwards = r.forwards(redis.as_ref());
    let environment = r.environment();
    let mesh_root = r.path("MESH_ROOT");
    let state_root = r.path("XTASK_STATE_DIR").unwrap_or_else(|| default_state_root(&shell));
    r.secret_whitespace();

    let Reader { errors, warnings, .. } = r;
    let config = Config {
        values,
        shell,
        files,
        warnings,
        bastion,
        redis,
        tunnel,
        forwards,
        environment,
        mesh_root,
        state_root,
    };
    if !errors.is_empty() {
        return Err(ConfigError::Invalid { findings: errors, partial: Box::new(config) });
    }
    Ok(config)
}

/// `$XDG_STATE_HOME/mesh-dev`, else `~/.local/state/mesh-dev`.
fn default_state_root(shell: &BTreeMap<String, String>) -> PathBuf {
    match (shell.get("XDG_STATE_HOME"), shell.get("HOME")) {
        (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg).join("mesh-dev"),
        (_, Some(home)) => PathBuf::from(home).join(".local/state/mesh-dev"),
        _ => PathBuf::from("/tmp/mesh-dev-state"),
    }
}

impl Reader<'_> {
    /// The raw value, or the default; `None` when unset or set empty.
    fn raw(&self, name: &str) -> Option<(String, Origin, String)> {
        match self.values.get(name) {
            Some(v) if !v.raw.trim().is_empty() => {
                Some((v.raw.trim().to_string(), v.origin.clone(), v.written_as.clone()))
            }
            _ => vars::lookup(name)
                .and_then(|s| s.default)
                .map(|d| (d.to_string(), Origin::Default, name.to_string())),
        }
    }

    fn error(&mut self, origin: Origin, var: &str, message: String) {
        self.errors.push(Finding { origin, var: var.to_string(), message });
    }

    fn warn(&mut self, origin: Origin, var: &str, message: String) {
        self.warnings.push(Finding { origin, var: var.to_string(), message });
    }

    /// A value set to the empty string where one is required.
    fn empty_required(&mut self, name: &str, example: &str) -> bool {
        match self.values.get(name) {
            Some(v) if v.raw.trim().is_empty() => {
                let (origin, written) = (v.origin.clone(), v.written_as.clone());
                self.error(
                    origin,
                    &written,
                    format!("{written} is empty: set it, for example `{written}={example}`"),
                );
                true
            }
            _ => false,
        }
    }

    fn port(&mut self, name: &str) -> Option<u16> {
        let (raw, origin, written) = self.raw(name)?;
        match parse_port(&raw) {
            Ok(port) => Some(port),
            Err(why) => {
                self.error(origin, &written, format!("{written}={raw}: {why}"));
                None
            }
        }
    }

    fn number(&mut self, name: &str, min: u64) -> u64 {
        let spec_default = vars::lookup(name).and_then(|s| s.default).unwrap_or("1");
        let fallback = spec_default.parse().unwrap_or(min);
        let Some((raw, origin, written)) = self.raw(name) else { return fallback };
        let digits = if vars::lookup(name).map(|s| s.kind) == Some(Kind::Seconds) {
            raw.strip_suffix('s').unwrap_or(&raw)
        } else {
            &raw
        };
        match digits.parse::<u64>() {
            Ok(n) if n >= min && n <= u64::from(u32::MAX) => n,
            _ => {
                let message = format!(
                    "{written}={raw} is not a whole number of at least {min}: \
                     use for example `{written}={spec_default}`"
                );
                self.error(origin, &written, message);
                fallback
            }
        }
    }

    fn bool(&mut self, name: &str) -> Option<bool> {
        let (raw, origin, written) = self.raw(name)?;
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => {
                let message = format!("{written}={raw} is not a boolean: use `true` or `false`");
                self.error(origin, &written, message);
                None
            }
        }
    }

    /// A path with `~`, `$HOME` and `${HOME}` expanded.
    fn path(&mut self, name: &str) -> Option<PathBuf> {
        let (raw, _, _) = self.raw(name)?;
        let home = self.home.clone().unwrap_or_default();
        let expanded = if raw == "~" {
            home
        } else if let Some(rest) = raw.strip_prefix("~/") {
            format!("{home}/{rest}")
        } else {
            raw.replace("${HOME}", &home).replace("$HOME", &home)
        };
        Some(PathBuf::from(expanded))
    }

    fn text(&self, name: &str) -> Option<String> {
        self.raw(name).map(|(raw, _, _)| raw)
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        // Secrets are kept exactly as written: whitespace is warned about, not removed.
        self.values.get(name).filter(|v| !v.raw.is_empty()).map(|v| Secret::new(v.raw.clone()))
    }

    /// Warns about host names that work in one setting and not another.
    fn host_traps(&mut self, host: &str, origin: &Origin, written: &str) {
        if host.eq_ignore_ascii_case("localhost") {
            let message = format!(
                "{written} uses `localhost`, which can resolve to ::1 while a forward listens \
                 on 127.0.0.1: use `127.0.0.1`"
            );
            self.warn(origin.clone(), written, message);
        } else if DOCKER_ONLY_HOSTS.contains(&host.to_ascii_lowercase().as_str()) {
            let message = format!(
                "{written} is `{host}`, a name that only resolves inside Docker Compose; on a \
                 native run use the real endpoint (or `127.0.0.1` for a local server)"
            );
            self.warn(origin.clone(), written, message);
        }
    }

    fn redis(&mut self) -> Option<Redis> {
        let endpoint =
            self.endpoint("ELASTICACHE_ENDPOINT", 6379, "my-cache.abc123.cache.amazonaws.com");
        let local_port = self.port("REDIS_TUNNEL_PORT").unwrap_or(6379);
        let tls_flag = self.bool("REDIS_TLS_ENABLED");
        let ca_cert = self.path("REDIS_CA_CERT");
        let (host, port, scheme_tls) = endpoint?;
        Some(Redis {
            host,
            port,
            local_port,
            username: self.text("REDIS_USERNAME"),
            password: self.secret("REDIS_PASSWORD"),
            tls: match self.values.get("REDIS_TLS_ENABLED") {
                Some(v) if scheme_tls && tls_flag == Some(false) && !v.raw.trim().is_empty() => {
                    let (origin, written) = (v.origin.clone(), v.written_as.clone());
                    let message = format!(
                        "{written}=false contradicts the `rediss://` endpoint, which asks for \
                         TLS: remove one of them (ElastiCache with encryption needs TLS)"
                    );
                    self.error(origin, &written, message);
                    false
                }
                // Set empty, it is unset: the scheme decides.
                Some(v) if !v.raw.trim().is_empty() => tls_flag.unwrap_or(false),
                _ => scheme_tls,
            },
            ca_cert,
        })
    }

    /// Host, port and whether the scheme asked for TLS (`rediss://`).
    fn endpoint(
        &mut self,
        name: &str,
        default_port: u16,
        example: &str,
    ) -> Option<(String, u16, bool)> {
        // Only the Redis endpoint is required; an empty optional one means "none".
        if name == "ELASTICACHE_ENDPOINT" && self.empty_required(name, example) {
            return None;
        }
        let (raw, origin, written) = self.raw(name)?;
        let (rest, tls) = match raw.split_once("://") {
            Some(("redis", rest)) => (rest, false),
            Some(("rediss", rest)) => (rest, true),
            Some((scheme, _)) => {
                let message = format!(
                    "{written} starts with `{scheme}://`: use a host name, optionally with \
                     `redis://` or `rediss://` and `:port`"
                );
                self.error(origin, &written, message);
                return None;
            }
            None => (raw.as_str(), false),
        };
        let (rest, database) = rest.split_once('/').unwrap_or((rest, ""));
        if !database.is_empty() {
            let message = format!(
                "{written} names database `/{database}`, which the tunnel and the checks do not \
                 use (the services choose their own): drop it from the endpoint"
            );
            self.warn(origin.clone(), &written, message);
        }
        if rest.contains('@') {
            let message = format!(
                "{written} carries credentials: remove them from the endpoint and set \
                 REDIS_USERNAME / REDIS_PASSWORD instead"
            );
            self.error(origin, &written, message);
            return None;
        }
        let (host, port) = match split_host_port(rest) {
            Ok((host, Some(port))) => match parse_port(port) {
                Ok(port) => (host, port),
                Err(why) => {
                    self.error(origin, &written, format!("{written}={raw}: {why}"));
                    return None;
                }
            },
            Ok((host, None)) => (host, default_port),
            Err(why) => {
                self.error(origin, &written, format!("{written}={raw}: {why}"));
                return None;
            }
        };
        self.host_traps(host, &origin, &written);
        Some((host.to_string(), port, tls))
    }

    fn bastion(&mut self) -> Option<Bastion> {
        if self.empty_required("BASTION_HOST_IP", "10.0.1.10") {
            return None;
        }
        let host = match self.raw("BASTION_HOST_IP") {
            Some((raw, origin, written)) if raw.chars().any(char::is_whitespace) => {
                self.error(origin, &written, format!("{written} contains spaces: give one host"));
                None
            }
            Some((raw, origin, written)) => {
                self.host_traps(&raw, &origin, &written);
                Some(raw)
            }
            None => None,
        };
        let port = self.port("BASTION_PORT").unwrap_or(22);
        let key_file = self.path("BASTION_KEY_FILE");
        let known_hosts = self.path("BASTION_KNOWN_HOSTS").unwrap_or_default();
        Some(Bastion {
            host: host?,
            port,
            user: self.text("BASTION_USER").unwrap_or_else(|| "ec2-user".into()),
            key_file,
            passphrase: self.secret("BASTION_KEY_PASSPHRASE"),
            known_hosts,
        })
    }

    fn bind_address(&mut self) -> IpAddr {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let Some((raw, origin, written)) = self.raw("TUNNEL_BIND_ADDRESS") else { return loopback };
        match raw.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let message = format!(
                    "{written}={raw} is not an IP address: use `127.0.0.1` (the default), or \
                     the address to listen on"
                );
                self.error(origin, &written, message);
                loopback
            }
        }
    }

    fn forwards(&mut self, redis: Option<&Redis>) -> Vec<Forward> {
        // Each forward with the variable its local port came from, to name it in errors.
        let mut forwards: Vec<(Forward, Origin, String)> = Vec::new();
        let source = |r: &Self, name: &str| {
            r.raw(name).map_or((Origin::Default, name.to_string()), |(_, origin, w)| (origin, w))
        };
        if let Some(redis) = redis {
            let forward = Forward {
                name: "redis".into(),
                local_port: redis.local_port,
                remote_host: redis.host.clone(),
                remote_port: redis.port,
            };
            let (origin, written) = source(self, "REDIS_TUNNEL_PORT");
            forwards.push((forward, origin, written));
        }
        let rds = self.endpoint("RDS_ENDPOINT", 5432, "mydb.abc123.us-east-1.rds.amazonaws.com");
        let rds_port = self.port("RDS_TUNNEL_PORT").unwrap_or(5432);
        if let Some((host, port, _)) = rds {
            let forward = Forward {
                name: "postgres".into(),
                local_port: rds_port,
                remote_host: host,
                remote_port: port,
            };
            let (origin, written) = source(self, "RDS_TUNNEL_PORT");
            forwards.push((forward, origin, written));
        }
        if let Some((raw, origin, written)) = self.raw("TUNNEL_EXTRA_FORWARDS") {
            for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match parse_extra_forward(item) {
                    Ok(forward) => forwards.push((forward, origin.clone(), written.clone())),
                    Err(why) => self.error(
                        origin.clone(),
                        &written,
                        format!("{written}: `{item}` {why}; write LOCAL:HOST:PORT, e.g. 6380:reader.example:6380"),
                    ),
                }
            }
        }
        self.check_distinct_ports(&forwards);
        forwards.into_iter().map(|(forward, _, _)| forward).collect()
    }

    /// Two forwards on one local port: an error naming where each port was set.
    fn check_distinct_ports(&mut self, forwards: &[(Forward, Origin, String)]) {
        for (i, (a, a_origin, a_var)) in forwards.iter().enumerate() {
            let earlier = forwards[..i].iter().find(|(b, _, _)| b.local_port == a.local_port);
            if let Some((b, b_origin, b_var)) = earlier {
                let message = format!(
                    "forwards `{}` ({}) and `{}` ({}) both use local port {}: give each its own \
                     port",
                    b.name,
                    port_source(b_var, b_origin),
                    a.name,
                    port_source(a_var, a_origin),
                    a.local_port
                );
                self.error(a_origin.clone(), a_var, message);
            }
        }
    }

    fn environment(&mut self) -> String {
        let (raw, origin, written) = self.raw("ENVIRONMENT").unwrap_or((
            "development".into(),
            Origin::Default,
            "ENVIRONMENT".into(),
        ));
        let allowed = ["development", "test", "docker", "production"];
        if !allowed.contains(&raw.as_str()) {
            let message = format!(
                "{written}={raw} is not one of development, test, docker, production: \
                 use `ENVIRONMENT=development` on a laptop"
            );
            self.error(origin, &written, message);
        }
        raw
    }

    fn secret_whitespace(&mut self) {
        let suspicious: Vec<(Origin, String)> = self
            .values
            .values()
            .filter(|v| vars::looks_secret(&v.name) && v.raw.trim() != v.raw && !v.raw.is_empty())
            .map(|v| (v.origin.clone(), v.written_as.clone()))
            .collect();
        for (origin, written) in suspicious {
            let message = format!(
                "{written} starts or ends with whitespace (a pasted newline?); it is used as \
                 written: remove the whitespace unless it is really part of the secret"
            );
            self.warn(origin, &written, message);
        }
    }
}

/// Where a variable's value came from, for a person: `--set NAME`, `NAME at .env:3`.
fn port_source(var: &str, origin: &Origin) -> String {
    match origin {
        Origin::Flag => format!("--set {var}"),
        Origin::Sandbox => format!("{var} of the sandbox"),
        Origin::Shell => format!("{var} in the shell"),
        Origin::File { .. } => format!("{var} at {origin}"),
        Origin::Default => format!("the default of {var}"),
    }
}

/// A TCP port from 1 to 65535, or why not.
fn parse_port(raw: &str) -> Result<u16, String> {
    match raw.parse::<u32>() {
        Ok(0) => Err("port 0 is not a usable port: use a number from 1 to 65535".into()),
        Ok(n) if n > 65535 => Err(format!("{n} is out of range: use a number from 1 to 65535")),
        Ok(n) => Ok(n as u16),
        Err(_) => Err(format!("`{raw}` is not a port number: use a number from 1 to 65535")),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(raw: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed `[`")?;
        return Ok((host, after.strip_prefix(':')));
    }
    let host_port = match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        Some(_) if raw.parse::<std::net::Ipv6Addr>().is_err() => {
            return Err(
                "has more than one `:`: write `host:port` (an IPv6 address as `[addr]:port`)"
                    .into(),
            );
        }
        _ => (raw, None),
    };
    if host_port.0.is_empty() {
        return Err("has no host name".into());
    }
    if host_port.0.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("is not a host name (spaces or `/` inside)".into());
    }
    Ok(host_port)
}

fn parse_extra_forward(item: &str) -> Result<Forward, String> {
    let mut parts = item.splitn(2, ':');
    let local = parts.next().unwrap_or_default();
    let target = parts.next().ok_or("has no target")?;
    let local_port = parse_port(local).map_err(|why| format!("has a bad local port: {why}"))?;
    let (host, port) = split_host_port(target)?;
    let port = port.ok_or("has no target port")?;
    let remote_port = parse_port(port).map_err(|why| format!("has a bad target port: {why}"))?;
    Ok(Forward {
        name: format!("extra-{local_port}"),
        local_port,
        remote_host: host.to_string(),
        remote_port,
    })
}
