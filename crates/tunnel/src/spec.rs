//! What a tunnel is asked to do: the bastion, the credentials, the forwards and the timings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_config::{Forward, Secret};

use crate::ssh_config::{expand_home, HostConfig};
use crate::TunnelError;

/// Everything needed to bind and run one tunnel. Build it with [`TunnelSpec::new`] and
/// adjust the public fields.
#[derive(Clone, Debug)]
pub struct TunnelSpec {
    /// The bastion's address or name, or a `Host` alias of `ssh_config`.
    pub host: String,
    /// 0 means "not set": the alias's `Port`, else 22.
    pub port: u16,
    /// Empty means "not set": the alias's `User`, else `ec2-user`.
    pub user: String,
    /// Tried first; `None` means the alias's `IdentityFile`, else the agent only.
    pub key_file: Option<PathBuf>,
    /// For an encrypted key; without it a terminal is asked once (see `interactive`).
    pub passphrase: Option<Secret>,
    /// May ask for a passphrase on the terminal; defaults to whether stdin is one.
    pub interactive: bool,
    /// The ssh-agent socket, tried after the key file; defaults to `SSH_AUTH_SOCK`.
    pub agent: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// Record an unknown host key instead of refusing it (trust on first use, explicit).
    pub accept_new: bool,
    /// `~/.ssh/config`, read for a `Host` alias named by `host`.
    pub ssh_config: Option<PathBuf>,
    pub forwards: Vec<Forward>,
    /// Empty means IPv4 and IPv6 loopback (`::1` only where the system has it).
    pub bind_addrs: Vec<IpAddr>,
    /// ServerAliveInterval: a keepalive after this much silence from the bastion.
    pub keepalive_interval: Duration,
    /// ServerAliveCountMax: this many unanswered keepalives end the session.
    pub keepalive_count: u32,
    /// Bounds the TCP connect, the SSH handshake and authentication together.
    pub connect_timeout: Duration,
    pub channel_open_timeout: Duration,
    /// How long a connection arriving during an outage waits for the session.
    pub outage_wait: Duration,
    /// The first reconnect delay; it doubles up to `reconnect_max`, with jitter.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl TunnelSpec {
    /// A spec with the documented defaults: `~/.ssh/known_hosts`, `~/.ssh/config`, loopback,
    /// keepalive 15 s x 3, 15 s connect and 10 s channel-open timeouts, backoff 0.5 s to 30 s.
    pub fn new(host: impl Into<String>, forwards: Vec<Forward>) -> TunnelSpec {
        TunnelSpec {
            host: host.into(),
            port: 0,
            user: String::new(),
            key_file: None,
            passphrase: None,
            interactive: std::io::IsTerminal::is_terminal(&std::io::stdin()),
            agent: std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(PathBuf::from),
            known_hosts: expand_home("~/.ssh/known_hosts"),
            accept_new: false,
            ssh_config: Some(expand_home("~/.ssh/config")),
            forwards,
            bind_addrs: Vec::new(),
            keepalive_interval: Duration::from_secs(15),
            keepalive_count: 3,
            connect_timeout: Duration::from_secs(15),
            channel_open_timeout: Duration::from_secs(10),
            outage_wait: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }

    /// The addresses listeners bind: the spec's, or both loopbacks.
    pub(crate) fn bind_addrs_or_default(&self) -> (Vec<IpAddr>, bool) {
        if self.bind_addrs.is_empty() {
            (vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)], true)
        } else {
            (self.bind_addrs.clone(), false)
        }
    }

    /// The bastion as it will be dialled, `user@host:port`, after the
    /// `~/.ssh/config` alias and the defaults: for messages.
    pub fn destination(&self) -> String {
        match self.resolve() {
            Ok(target) => target.to_string(),
            Err(_) => self.host.clone(),
        }
    }

    /// Applies the `ssh_config` alias, if any, to the values the spec leaves unset.
    pub(crate) fn resolve(&self) -> Result<Target, TunnelError> {
        let alias = match &self.ssh_config {
            Some(path) => HostConfig::load(path, &self.host).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ssh config unreadable, ignored");
                HostConfig::default()
            }),
            None => HostConfig::default(),
        };
        let user = match (self.user.is_empty(), alias.user) {
            (false, _) => self.user.clone(),
            (true, Some(user)) => user,
            (true, None) => "ec2-user".to_string(),
        };
        Ok(Target {
            host: alias.host_name.unwrap_or_else(|| self.host.clone()),
            port: if self.port != 0 { self.port } else { alias.port.unwrap_or(22) },
            user,
            key_file: self.key_file.clone().or(alias.identity_file),
        })
    }
}

/// The bastion as dialled, after the `ssh_config` alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}
