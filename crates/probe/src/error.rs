//! Every way a Redis check can fail, each with its own message and fix.

use std::path::PathBuf;
use std::time::Duration;

/// The step a timeout happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    TlsHandshake,
    /// Waiting for the reply to a command.
    Reply,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "to connect",
            Phase::TlsHandshake => "for the TLS handshake",
            Phase::Reply => "for a reply",
        })
    }
}

/// A failed Redis check. `target` is always how the check names what it dialled, e.g.
/// `cache.example.com:6379 through the forward 127.0.0.1:6379`; no variant ever holds a secret.
///
/// Underlying I/O errors are kept as `cause` and written into the message itself (not as an
/// error `source`), so a printed chain does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens on the local forward: the tunnel is not running.
    #[error(
        "nothing listens on the forward 127.0.0.1:{local_port} (for {endpoint}): no tunnel is \
         running; start it with `cargo xtask tunnel start`, or pass --direct to dial the \
         endpoint itself"
    )]
    ForwardRefused { endpoint: String, local_port: u16 },

    /// The endpoint itself refused the connection (direct route).
    #[error(
        "{target} refused the connection: check ELASTICACHE_ENDPOINT and its port, and that \
         Redis is running there"
    )]
    Refused { target: String },

    /// The endpoint's name does not resolve (direct route).
    #[error(
        "cannot resolve {host}: {cause}; an in-VPC name only resolves inside the VPC, so drop \
         --direct to go through the tunnel"
    )]
    Resolve { host: String, cause: std::io::Error },

    /// Any other failure to open the TCP connection.
    #[error("cannot connect to {target}: {cause}")]
    Connect { target: String, cause: std::io::Error },

    /// A step took longer than the timeout.
    #[error(
        "{target} did not answer: waited {} {phase}; check that the endpoint is up and that \
         its security group lets the bastion in (or raise --timeout)",
        humanize(*after)
    )]
    Timeout { target: String, phase: Phase, after: Duration },

    /// The tunnel accepted the connection but its bastion could not open a channel to the
    /// endpoint.
    #[error(
        "the bastion cannot reach {endpoint}: the tunnel closed the connection at once and \
         reports `{reason}`; check ELASTICACHE_ENDPOINT and that the endpoint's security group \
         admits the bastion"
    )]
    BastionUnreachable { endpoint: String, reason: String },

    /// The connection was closed before any reply, and neither TLS nor the tunnel explains it.
    #[error(
        "{target} closed the connection before answering: through the tunnel this usually \
         means the bastion cannot reach the endpoint (see `cargo xtask tunnel status`); \
         direct, that Redis drops this client"
    )]
    ClosedAtOnce { target: String },

    /// Plain text met a server that only speaks TLS.
    #[error(
        "{target} only speaks TLS (it dropped our plain-text command and answered a TLS \
         handshake): set REDIS_TLS_ENABLED=true"
    )]
    TlsRequired { target: String },

    /// TLS is on but the server answered in plain text.
    #[error(
        "{target} does not speak TLS (it answered our handshake with plain text): set \
         REDIS_TLS_ENABLED=false, or check that ELASTICACHE_ENDPOINT names the TLS endpoint"
    )]
    TlsNotSpoken { target: String },

    /// The certificate is not valid for the endpoint's name.
    #[error(
        "the TLS certificate of {target} is not valid for `{expected}`: it names {}; set \
         ELASTICACHE_ENDPOINT to one of those names (TLS checks the endpoint's name, never \
         127.0.0.1)",
        list_names(presented)
    )]
    TlsNameMismatch { target: String, expected: String, presented: Vec<String> },

    /// The certificate was issued by an authority we do not trust.
    #[error(
        "the TLS certificate of {target} was issued by an unknown authority{}: set \
         REDIS_CA_CERT to the PEM file of the CA that signed it",
        match ca_cert { Some(path) => format!(" (not by {})", path.display()), None => String::new() }
    )]
    TlsUnknownCa { target: String, ca_cert: Option<PathBuf> },

    /// Any other TLS failure (expired certificate, protocol mismatch...).
    #[error("TLS with {target} failed: {detail}; pass --insecure only to diagnose")]
    Tls { target: String, detail: String },

    /// `REDIS_CA_CERT` cannot be read or holds no certificate.
    #[error("cannot use REDIS_CA_CERT {}: {detail}; point it at a PEM file of the CA", path.display())]
    CaCert { path: PathBuf, detail: String },

    /// The system store holds no usable root certificate.
    #[error(
        "no root certificates found in the system store ({detail}): install `ca-certificates`, \
         or set REDIS_CA_CERT"
    )]
    NoRoots { detail: String },

    /// The server wants a password and none was sent.
    #[error("{target} requires a password (NOAUTH): set REDIS_PASSWORD (and REDIS_USERNAME for an ACL user)")]
    NoAuth { target: String },

    /// The password (or user and password) was rejected.
    #[error(
        "{target} rejected the {} (WRONGPASS): check REDIS_PASSWORD{}{}",
        if user.is_some() { "user and password" } else { "password" },
        match user { Some(name) => format!(" and REDIS_USERNAME (`{name}`)"), None => String::new() },
        if *whitespace { "; the password starts or ends with whitespace, which is probably a pasting mistake" } else { "" }
    )]
    WrongPass { target: String, user: Option<String>, whitespace: bool },

    /// A password was sent to a server that has none.
    #[error(
        "{target} has no password set but we sent one: unset REDIS_PASSWORD (or give the \
         server a password)"
    )]
    PasswordNotExpected { target: String },

    /// The ACL user may not run a command the check needs.
    #[error(
        "{} may not run `{command}` on {target} (NOPERM): grant it in the ACL (e.g. `+{}`), \
         or use a user that may",
        match user { Some(name) => format!("ACL user `{name}`"), None => "the default user".to_string() },
        command.to_lowercase()
    )]
    NoPerm { target: String, user: Option<String>, command: String },

    /// Something answered, but not in the Redis protocol.
    #[error(
        "{target} is not Redis: it answered `{detail}`, which is not the Redis protocol; check \
         the port (an SSH or HTTP port answers like this)"
    )]
    NotRedis { target: String, detail: String },

    /// A command failed with a server error no other variant describes.
    #[error("{target} answered `{command}` with an error: {detail}")]
    Server { target: String, command: String, detail: String },

    /// The connection broke after it had worked.
    #[error("the connection to {target} broke: {cause}")]
    Io { target: String, cause: std::io::Error },

    /// The benchmark needs more file descriptors (one per client) than the process may open.
    #[error(
        "-c {clients} needs about {needed} open files, the limit is {limit}: lower -c or raise \
         it with `ulimit -n`"
    )]
    OpenFiles { clients: usize, needed: u64, limit: u64 },

    /// A benchmark on a production target was not confirmed.
    #[error(
        "ENVIRONMENT is production: the benchmark writes to {target}; pass --yes to run it \
         anyway, or run it from a terminal to be asked"
    )]
    ProductionNotConfirmed { target: String },
}

impl ProbeError {
    /// A stable short name for `--json` and tests: `refused`, `timeout`, `wrongpass`...
    pub fn class(&self) -> &'static str {
        match self {
            ProbeError::ForwardRefused { .. } | ProbeError::Refused { .. } => "refused",
            ProbeError::Resolve { .. } => "resolve",
            ProbeError::Connect { .. } => "connect",
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::BastionUnreachable { .. } => "bastion-unreachable",
            ProbeError::ClosedAtOnce { .. } => "closed",
            ProbeError::TlsRequired { .. } => "tls-required",
            ProbeError::TlsNotSpoken { .. } => "tls-not-spoken",
            ProbeError::TlsNameMismatch { .. } => "tls-name-mismatch",
            ProbeError::TlsUnknownCa { .. } => "tls-unknown-ca",
            ProbeError::Tls { .. } => "tls",
            ProbeError::CaCert { .. } => "ca-cert",
            ProbeError::NoRoots { .. } => "no-roots",
            ProbeError::NoAuth { .. } => "noauth",
            ProbeError::WrongPass { .. } => "wrongpass",
            ProbeError::PasswordNotExpected { .. } => "password-not-expected",
            ProbeError::NoPerm { .. } => "noperm",
            ProbeError::NotRedis { .. } => "not-redis",
            ProbeError::Server { .. } => "server",
            ProbeError::Io { .. } => "io",
            ProbeError::OpenFiles { .. } => "open-files",
            ProbeError::ProductionNotConfirmed { .. } => "production-not-confirmed",
        }
    }

    /// True for a problem with the configuration or the request rather than with the target
    /// (exit code 2 in the CLI).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ProbeError::CaCert { .. }
                | ProbeError::OpenFiles { .. }
                | ProbeError::ProductionNotConfirmed { .. }
        )
    }
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "no name at all".to_string();
    }
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn humanize(after: Duration) -> String {
    if after.as_millis() < 1000 {
        format!("{} ms", after.as_millis())
    } else {
        format!("{:.1} s", after.as_secs_f64())
    }
}
