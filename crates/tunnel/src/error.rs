//! Every failure of the tunnel a user must act on, each naming what failed and the fix.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a tunnel could not be bound, started or kept up.
///
/// Messages say what failed, on which host, port or path, and the next step.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "the bastion {host}:{port} refused user `{user}` after trying {}: add the public key to ~{user}/.ssh/authorized_keys on the bastion, or set \
         BASTION_KEY_FILE to the key it accepts",
        tried_list(.tried)
    )]
    AuthRejected { user: String, host: String, port: u16, tried: Vec<String> },

    #[error(
        "cannot bind {addr}: {source}: choose another local port or bind address (the forward \
         `{forward}`)"
    )]
    Bind { forward: String, addr: SocketAddr, source: io::Error },

    #[error(
        "the bastion {host}:{port} cannot reach the endpoint {target_host}:{target_port} of the \
         forward `{forward}`: {reason}: check the endpoint's security group (it must admit the \
         bastion), its DNS name and port"
    )]
    EndpointUnreachable {
        forward: String,
        host: String,
        port: u16,
        target_host: String,
        target_port: u16,
        reason: String,
    },

    #[error(
        "the bastion {host}:{port} offered a revoked host key {fingerprint} (marked @revoked in \
         {path}): do not connect; ask the bastion's owner which key it should have",
        path = .path.display()
    )]
    HostKeyRevoked { host: String, port: u16, fingerprint: String, path: PathBuf },

    #[error(
        "the host key of the bastion {host}:{port} has CHANGED: {path} records {}, the server \
         offered {got}. Someone may be intercepting the connection. If the bastion was really \
         replaced, remove the old key with `{remove_cmd}` and connect again with --accept-new",
        expected.join(", "), path = .path.display()
    )]
    HostKeyMismatch {
        host: String,
        port: u16,
        expected: Vec<String>,
        got: String,
        path: PathBuf,
        remove_cmd: String,
    },

    #[error(
        "cannot reach the bastion {host}:{port}: {source}: check BASTION_HOST_IP and \
         BASTION_PORT, your network or VPN, and the bastion's security group"
    )]
    HostUnreachable { host: String, port: u16, source: io::Error },

    #[error(
        "the private key {path} is encrypted and no passphrase was given: set \
         BASTION_KEY_PASSPHRASE, run from a terminal to be asked, or load the key into ssh-agent",
        path = .path.display()
    )]
    KeyNeedsPassphrase { path: PathBuf },

    #[error(
        "the private key {path} has mode {mode:04o}, readable by other users; ssh refuses such \
         keys: run `chmod 600 {path}`",
        path = .path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },

    #[error(
        "cannot read the private key {path}: {source}: check BASTION_KEY_FILE",
        path = .path.display()
    )]
    KeyUnreadable { path: PathBuf, source: io::Error },

    #[error(
        "cannot read the known hosts file {path}: {source}: fix its permissions or point \
         BASTION_KNOWN_HOSTS elsewhere",
        path = .path.display()
    )]
    KnownHostsUnreadable { path: PathBuf, source: io::Error },

    #[error(
        "cannot record the bastion's host key in {path}: {source}: check that the directory is \
         writable",
        path = .path.display()
    )]
    KnownHostsWrite { path: PathBuf, source: io::Error },

    #[error(
        "no key to offer to the bastion {host}:{port} as `{user}`: set BASTION_KEY_FILE, or \
         start ssh-agent and `ssh-add` your key"
    )]
    NoCredentials { user: String, host: String, port: u16 },

    #[error(
        "local port {port} on {addr} is already in use{}: stop that process or set another \
         local port (the forward `{forward}`)",
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    PortInUse { forward: String, port: u16, addr: SocketAddr, holder: Option<String> },

    #[error(
        "the SSH session with the bastion {host}:{port} failed: {source}: check that \
         BASTION_HOST_IP and BASTION_PORT name an SSH server; RUST_LOG=russh=debug shows the \
         exchange"
    )]
    Ssh { host: String, port: u16, source: russh::Error },

    /// `~/.ssh/config` names an `Include` that cannot be read or that loops.
    #[error(transparent)]
    SshConfig(#[from] crate::ssh_config::SshConfigError),

    #[error("cannot start the tunnel's thread: {source}: the system is out of threads or memory")]
    Thread { source: io::Error },

    #[error(
        "timed out after {}s during {what} with the bastion {host}:{port}: check the address \
         and the security group (a dropped SYN looks like this), or raise \
         TUNNEL_CONNECT_TIMEOUT",
        after.as_secs_f32()
    )]
    Timeout { what: &'static str, host: String, port: u16, after: Duration },

    #[error(
        "the bastion {host}:{port} is not in {path}; its {fingerprint}. Check it with the \
         bastion's owner, then run again with --accept-new to record it",
        path = .path.display()
    )]
    UnknownHostKey { host: String, port: u16, fingerprint: String, path: PathBuf },

    #[error(
        "cannot read the private key {path}: {detail}: rewrite it in the OpenSSH format with \
         `ssh-keygen -p -f {path}`",
        path = .path.display()
    )]
    UnsupportedKeyFormat { path: PathBuf, detail: String },

    #[error(
        "the passphrase for the private key {path} is wrong: check BASTION_KEY_PASSPHRASE \
         (a trailing newline counts)",
        path = .path.display()
    )]
    WrongPassphrase { path: PathBuf },
}

/// Why the bastion refused a `direct-tcpip` channel, in words, with its own text if any.
pub(crate) fn open_failure(reason: &russh::ChannelOpenFailure, detail: Option<String>) -> String {
    let reason = match reason {
        russh::ChannelOpenFailure::AdministrativelyProhibited => {
            "forwarding refused by the bastion's policy (AllowTcpForwarding or PermitOpen in \
             its sshd_config)"
                .to_string()
        }
        russh::ChannelOpenFailure::ConnectFailed => "the connection failed".to_string(),
        other => format!("{other:?}"),
    };
    match detail {
        Some(detail) if !detail.is_empty() => format!("{reason} ({detail})"),
        _ => reason,
    }
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "no key".to_string()
    } else {
        tried.join(", ")
    }
}

impl TunnelError {
    /// True for failures that retrying later may cure (the network, the bastion being
    /// restarted), false for those that need the user (keys, host keys, ports).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TunnelError::HostUnreachable { .. }
                | TunnelError::Timeout { .. }
                | TunnelError::Ssh { .. }
                | TunnelError::EndpointUnreachable { .. }
        )
    }
}

/// Why a Redis health check through a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("cannot connect to Redis through the tunnel at {addr}: {source}: is the tunnel up?")]
    Connect { addr: SocketAddr, source: io::Error },

    #[error(
        "Redis at {addr} closed the connection before answering: the bastion may not reach the \
         endpoint (see the forward's last channel error), or the server requires TLS"
    )]
    Closed { addr: SocketAddr },

    #[error("Redis at {addr} refused AUTH: {message}: check REDIS_USERNAME and REDIS_PASSWORD")]
    Auth { addr: SocketAddr, message: String },

    #[error("Redis at {addr} answered PING with `{reply}`")]
    Reply { addr: SocketAddr, reply: String },

    #[error("Redis at {addr} did not answer within {}s", after.as_secs_f32())]
    Timeout { addr: SocketAddr, after: Duration },
}
