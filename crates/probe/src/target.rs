//! What a check dials: the endpoint's name (what TLS verifies and messages show), the address
//! actually connected to (the local forward or the endpoint), and the credentials.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_config::Secret;

/// How long each step (connect, TLS handshake, a reply) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the TCP connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The endpoint itself (`--direct`): only works inside the VPC, or for a local Redis.
    Direct,
    /// The tunnel's local listener, which carries the connection to the endpoint.
    Forward(SocketAddr),
}

/// Whether and how TLS is spoken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain RESP.
    Off,
    /// TLS, the certificate verified against the endpoint's name, with the system roots or the
    /// given CA file (`REDIS_CA_CERT`).
    Verify { ca_cert: Option<PathBuf> },
    /// TLS without any certificate check (`--insecure`); every report says so.
    Insecure,
}

/// One Redis to check. Build it with [`Target::from_config`] or [`Target::new`].
#[derive(Clone, Debug)]
pub struct Target {
    /// The endpoint's host name or address, as configured; TLS verifies this name.
    pub host: String,
    /// The endpoint's port.
    pub port: u16,
    pub route: Route,
    /// The ACL user, when not the default user.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsMode,
    /// The limit for each step: connect, TLS handshake, each reply.
    pub timeout: Duration,
}

impl Target {
    /// A target with no credentials and no TLS, reached directly.
    pub fn new(host: impl Into<String>, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            route: Route::Direct,
            username: None,
            password: None,
            tls: TlsMode::Off,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The configured Redis, reached through the forward on `bind` (loopback when unspecified)
    /// unless `direct`; `insecure` turns certificate checks off when TLS is on.
    pub fn from_config(
        redis: &mesh_config::Redis,
        bind: IpAddr,
        direct: bool,
        insecure: bool,
    ) -> Target {
        let bind = if bind.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { bind };
        let tls = match (redis.tls, insecure) {
            (false, _) => TlsMode::Off,
            (true, true) => TlsMode::Insecure,
            (true, false) => TlsMode::Verify { ca_cert: redis.ca_cert.clone() },
        };
        Target {
            host: redis.host.clone(),
            port: redis.port,
            route: if direct {
                Route::Direct
            } else {
                Route::Forward(SocketAddr::new(bind, redis.local_port))
            },
            username: redis.username.clone(),
            password: redis.password.clone(),
            tls,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reach the endpoint through a local forward listening on `addr`.
    pub fn via(mut self, addr: SocketAddr) -> Target {
        self.route = Route::Forward(addr);
        self
    }

    pub fn password(mut self, password: Secret) -> Target {
        self.password = Some(password);
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Target {
        self.username = Some(user.into());
        self
    }

    pub fn tls(mut self, tls: TlsMode) -> Target {
        self.tls = tls;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Target {
        self.timeout = timeout;
        self
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// How messages name this target: `cache:6379`, or `cache:6379 through the forward
    /// 127.0.0.1:6379`.
    pub fn describe(&self) -> String {
        match &self.route {
            Route::Direct => self.endpoint(),
            Route::Forward(addr) => format!("{} through the forward {addr}", self.endpoint()),
        }
    }

    /// True when the certificate is not checked; reports must say so.
    pub fn insecure(&self) -> bool {
        self.tls == TlsMode::Insecure
    }

    /// A warning to show before checking, e.g. a password with a stray newline.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.password.as_ref().is_some_and(Secret::has_outer_whitespace) {
            warnings.push(
                "REDIS_PASSWORD starts or ends with whitespace (a pasted newline?): Redis \
                 compares it byte for byte, so it will likely be rejected"
                    .to_string(),
            );
        }
        if self.insecure() {
            warnings.push(format!(
                "TLS certificate NOT verified (--insecure): anyone between here and {} can read \
                 and change this traffic",
                self.endpoint()
            ));
        }
        warnings
    }
}
