//! What a tunnel is asked to do: the bastion, the credentials, the forwards and the timings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_config::{Forward, Secret};

use crate::ssh_config::{expand_home, ConfigLine, HostConfig, Key, SshConfigError};
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

    /// The bastion as it will be dialled: the `ssh_config` alias, if any, fills the values
    /// the spec leaves unset, then the defaults. `tunnel start` and `env` both use this.
    ///
    /// An unreadable `ssh_config` itself is skipped with a warning (ssh skips it too); an
    /// `Include` in it that cannot be read, or that loops, is an error, as for ssh.
    pub fn resolve(&self) -> Result<Target, TunnelError> {
        let alias = match &self.ssh_config {
            Some(path) => match HostConfig::load(path, &self.host) {
                Ok(alias) => alias,
                Err(e @ SshConfigError::Unreadable { .. }) => {
                    tracing::warn!(path = %path.display(), error = %e, "ssh config unreadable, ignored");
                    HostConfig::default()
                }
                Err(e) => return Err(e.into()),
            },
            None => HostConfig::default(),
        };
        // What the alias supplies, where the spec leaves it unset.
        let host = alias.host_name.clone();
        let port = alias.port.filter(|_| self.port == 0);
        let user = alias.user.clone().filter(|_| self.user.is_empty());
        let key_file = alias.identity_file.clone().filter(|_| self.key_file.is_none());
        let used = [
            (Key::HostName, host.is_some()),
            (Key::Port, port.is_some()),
            (Key::User, user.is_some()),
            (Key::IdentityFile, key_file.is_some()),
        ];
        let from_ssh_config = used
            .into_iter()
            .filter(|(_, used)| *used)
            .filter_map(|(key, _)| Some((key, alias.origin(key)?.clone())))
            .collect();
        Ok(Target {
            host: host.unwrap_or_else(|| self.host.clone()),
            port: port.unwrap_or(if self.port == 0 { 22 } else { self.port }),
            user: user.unwrap_or_else(|| {
                if self.user.is_empty() {
                    "ec2-user".to_string()
                } else {
                    self.user.clone()
                }
            }),
            key_file: key_file.or_else(|| self.key_file.clone()),
            from_ssh_config,
        })
    }
}

/// The bastion as dialled, after the `ssh_config` alias and the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_file: Option<PathBuf>,
    /// The `ssh_config` line each value above was taken from, by key; a key is absent when
    /// the spec or a default gave the value.
    pub from_ssh_config: BTreeMap<Key, ConfigLine>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_config(text: &str) -> (tempfile::TempDir, TunnelSpec) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config"), text).unwrap();
        let mut spec = TunnelSpec::new("bastion", Vec::new());
        spec.ssh_config = Some(dir.path().join("config"));
        (dir, spec)
    }

    #[test]
    fn alias_fills_only_what_the_spec_leaves_unset_and_says_from_which_line() {
        let (dir, mut spec) =
            spec_with_config("Host bastion\n  HostName 10.0.0.9\n  User ubuntu\n  Port 2222\n");
        spec.port = 22;
        let target = spec.resolve().unwrap();
        assert_eq!(target.to_string(), "ubuntu@10.0.0.9:22");
        let line = |line| ConfigLine { path: dir.path().join("config"), line };
        let expected = BTreeMap::from([(Key::HostName, line(2)), (Key::User, line(3))]);
        assert_eq!(target.from_ssh_config, expected);
    }

    #[test]
    fn without_an_alias_the_defaults_apply() {
        let (_dir, spec) = spec_with_config("Host other\n  User ubuntu\n");
        let target = spec.resolve().unwrap();
        assert_eq!(target.to_string(), "ec2-user@bastion:22");
        assert!(target.from_ssh_config.is_empty());
    }

    #[test]
    fn include_loop_fails_the_tunnel_but_an_unreadable_config_is_skipped() {
        let (_dir, spec) = spec_with_config("Include config\n");
        assert!(matches!(spec.resolve(), Err(TunnelError::SshConfig(_))));

        let (dir, mut spec) = spec_with_config("");
        let looped = dir.path().join("looped");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        spec.ssh_config = Some(looped);
        assert_eq!(spec.resolve().unwrap().to_string(), "ec2-user@bastion:22");
    }
}
