//! One SSH session with the bastion: connect, verify the host key, authenticate, and tell the
//! owner the moment the session dies.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::{cipher, ChannelId, ChannelOpenFailure, Preferred};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use crate::auth::{self, Credentials};
use crate::known_hosts::{self, describe, HostKeys, Verdict};
use crate::spec::{Target, TunnelSpec};
use crate::TunnelError;

/// Ciphers in the order we offer them: AES-GCM runs on AES-NI through ring and was the
/// fastest here; ChaCha20-Poly1305 for machines without AES instructions.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_CTR,
    cipher::AES_256_CTR,
];

/// What the session task shares with its owner.
#[derive(Default)]
pub(crate) struct Signals {
    /// A host-key refusal, set by `check_server_key` (russh itself only says "unknown key").
    pub host_key_error: Mutex<Option<TunnelError>>,
    /// Why the session ended, as russh reported it.
    pub end_reason: Mutex<Option<String>>,
    /// The bastion's text for the last refused channel open ("Connection refused").
    pub channel_failure: Mutex<Option<String>>,
}

/// The russh client handler: verifies the host key and reports the session's end.
pub(crate) struct Client {
    target: Target,
    known_hosts: PathBuf,
    accept_new: bool,
    host_keys: HostKeys,
    signals: Arc<Signals>,
    /// Dropped with the handler, which russh drops when the session task ends for any
    /// reason: the receiver then wakes the owner at once (trap 16).
    _alive: oneshot::Sender<()>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // We never ask for certificates; judge the key inside as a plain key.
            PublicKeyOrCertificate::Certificate(cert) => {
                russh::keys::PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let (host, port, path) = (&self.target.host, self.target.port, &self.known_hosts);
        let refusal = match self.host_keys.verdict(&key) {
            Verdict::Trusted => return Ok(true),
            Verdict::Unknown if self.accept_new => {
                match known_hosts::record(path, host, port, &key) {
                    Ok(()) => return Ok(true),
                    Err(e) => e,
                }
            }
            Verdict::Unknown => TunnelError::UnknownHostKey {
                host: host.clone(),
                port,
                fingerprint: describe(&key),
                path: path.clone(),
            },
            Verdict::Changed(expected) => TunnelError::HostKeyMismatch {
                host: host.clone(),
                port,
                expected,
                got: describe(&key),
                path: path.clone(),
                remove_cmd: known_hosts::remove_command(host, port, path),
            },
            Verdict::Revoked => TunnelError::HostKeyRevoked {
                host: host.clone(),
                port,
                fingerprint: describe(&key),
                path: path.clone(),
            },
        };
        tracing::warn!(host = %host, port, error = %refusal, "host key refused");
        *self.signals.host_key_error.lock().unwrap() = Some(refusal);
        Ok(false)
    }

    async fn channel_open_failure(
        &mut self,
        _channel: ChannelId,
        reason: ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let text = if description.is_empty() { format!("{reason:?}") } else { description.into() };
        *self.signals.channel_failure.lock().unwrap() = Some(text);
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let (text, result) = match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                (format!("the bastion closed the session: {}", info.message), Ok(()))
            }
            DisconnectReason::Error(russh::Error::KeepaliveTimeout) => {
                ("no answer to keepalives".to_string(), Err(russh::Error::KeepaliveTimeout))
            }
            DisconnectReason::Error(e) => (format!("session lost: {e}"), Err(e)),
        };
        tracing::debug!(reason = %text, "session ended");
        *self.signals.end_reason.lock().unwrap() = Some(text);
        result
    }
}

/// A live, authenticated session.
pub(crate) struct Session {
    pub handle: Handle<Client>,
    pub signals: Arc<Signals>,
    /// Resolves (with an error) when the session task has ended.
    pub ended: oneshot::Receiver<()>,
}

/// Connects, verifies the host key and authenticates, all within `spec.connect_timeout`.
pub(crate) async fn connect(
    target: &Target,
    spec: &TunnelSpec,
    credentials: &Credentials,
) -> Result<Session, TunnelError> {
    let deadline = Instant::now() + spec.connect_timeout;
    let timed_out = |what| TunnelError::Timeout {
        what,
        host: target.host.clone(),
        port: target.port,
        after: spec.connect_timeout,
    };

    let stream = timeout_at(deadline, TcpStream::connect((target.host.as_str(), target.port)))
        .await
        .map_err(|_| timed_out("the TCP connect"))?
        .map_err(|source| TunnelError::HostUnreachable {
            host: target.host.clone(),
            port: target.port,
            source,
        })?;
    stream.set_nodelay(true).map_err(|source| TunnelError::HostUnreachable {
        host: target.host.clone(),
        port: target.port,
        source,
    })?;

    let host_keys = HostKeys::load(&spec.known_hosts, &target.host, target.port)?;
    let config = Arc::new(client_config(spec, &host_keys));
    let signals = Arc::new(Signals::default());
    let (alive, ended) = oneshot::channel();
    let handler = Client {
        target: target.clone(),
        known_hosts: spec.known_hosts.clone(),
        accept_new: spec.accept_new,
        host_keys,
        signals: signals.clone(),
        _alive: alive,
    };

    // russh reads each packet with two exact reads straight from the socket; a buffer
    // turns a burst of packets into one system call.
    let stream = tokio::io::BufReader::with_capacity(64 * 1024, crate::quickack::QuickAck(stream));
    let handshake = client::connect_stream(config, stream, handler);
    let mut handle = match timeout_at(deadline, handshake).await {
        Err(_) => return Err(timed_out("the SSH handshake")),
        Ok(Err(source)) => {
            if let Some(refusal) = signals.host_key_error.lock().unwrap().take() {
                return Err(refusal);
            }
            return Err(TunnelError::Ssh { host: target.host.clone(), port: target.port, source });
        }
        Ok(Ok(handle)) => handle,
    };

    timeout_at(deadline, auth::authenticate(&mut handle, target, credentials))
        .await
        .map_err(|_| timed_out("authentication"))??;
    tracing::info!(bastion = %target, "session authenticated");
    Ok(Session { handle, signals, ended })
}

fn client_config(spec: &TunnelSpec, host_keys: &HostKeys) -> client::Config {
    let preferred = Preferred {
        key: Cow::Owned(host_keys.preferred_algorithms(&Preferred::DEFAULT.key)),
        cipher: Cow::Borrowed(CIPHERS),
        ..Preferred::DEFAULT
    };
    client::Config {
        preferred,
        keepalive_interval: Some(spec.keepalive_interval),
        // russh ends the session when more than `keepalive_max` keepalives went unanswered;
        // OpenSSH's ServerAliveCountMax counts the one that ends it. 0 would mean "never".
        keepalive_max: spec.keepalive_count.saturating_sub(1).max(1) as usize,
        nodelay: true,
        window_size: 4 * 1024 * 1024,
        inactivity_timeout: None,
        ..client::Config::default()
    }
}

/// How long a ping to the bastion took, bounded by `limit`.
pub(crate) async fn ping(handle: &Handle<Client>, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    match tokio::time::timeout(limit, handle.send_ping()).await {
        Ok(Ok(())) => Some(start.elapsed()),
        _ => None,
    }
}
