//! Our bastion: a russh server on a loopback port that, like the team's real
//! bastion, takes one public key and forwards ports, but only to the targets it
//! is configured with, resolving in-VPC names to local addresses.

use crate::keys::{generate_ed25519, write_known_hosts, write_private_key};
use crate::{Result, SandboxError};
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// How long the bastion waits for a target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sessions get to say goodbye on shutdown before their sockets are cut.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// The user name and comment written into the generated user key.
const USER_KEY_COMMENT: &str = "mesh-sandbox user key";

/// What the bastion serves.
#[derive(Clone, Debug)]
pub struct BastionConfig {
    /// Where the host key, the user key and `known_hosts` are written.
    pub dir: PathBuf,
    /// Forwarding targets as the VPC's DNS names them (`host:port`, e.g.
    /// `sandbox-ab12cd.serverless.use1.cache.amazonaws.com:6379`), each mapped to
    /// the local address that really serves it. Every other target is refused.
    pub targets: BTreeMap<String, SocketAddr>,
}

/// A running bastion. [`Bastion::shutdown`] stops it cleanly; dropping it cuts
/// every connection and closes the listener at once.
pub struct Bastion {
    /// The loopback port the SSH server listens on.
    port: u16,
    /// `known_hosts` holding the host key as `[127.0.0.1]:PORT ssh-ed25519 ...`.
    known_hosts: PathBuf,
    /// The OpenSSH private key file (mode 0600) of the only accepted user key.
    user_key: PathBuf,
    /// Shutdown signal and live sockets, shared with every connection.
    shared: Arc<Shared>,
    /// The accept loop; it owns the listener, so its end closes the port.
    accept: Option<JoinHandle<()>>,
}

impl Bastion {
    /// Generates the keys in `config.dir`, binds a free loopback port and starts
    /// serving. Must be called inside a tokio runtime.
    pub async fn start(config: BastionConfig) -> Result<Bastion> {
        let host_key = generate_ed25519("mesh-sandbox host key")?;
        let user = generate_ed25519(USER_KEY_COMMENT)?;
        let user_key = config.dir.join("bastion_user_ed25519");
        write_private_key(&user_key, &user)?;

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(|source| {
            SandboxError::Bind { host: Ipv4Addr::LOCALHOST.to_string(), port: 0, source }
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind {
                host: Ipv4Addr::LOCALHOST.to_string(),
                port: 0,
                source,
            })?
            .port();
        let known_hosts = config.dir.join("known_hosts");
        write_known_hosts(&known_hosts, port, host_key.public_key())?;

        let ssh_config = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(100),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            nodelay: true,
            ..Default::default()
        };
        let targets: Vec<String> = config.targets.keys().cloned().collect();
        let policy = Policy { user_key: user.public_key().clone(), targets: config.targets };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            shutdown,
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::new(ssh_config),
            Arc::new(policy),
            shared.clone(),
        ));

        info!(port, ?targets, "bastion listening");
        Ok(Bastion { port, known_hosts, user_key, shared, accept: Some(accept) })
    }

    /// The loopback port of the SSH server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sandbox `known_hosts` holding the bastion's host key.
    pub fn known_hosts_path(&self) -> &std::path::Path {
        &self.known_hosts
    }

    /// The private key file of the one user key the bastion accepts.
    pub fn user_key_path(&self) -> &std::path::Path {
        &self.user_key
    }

    /// Stops accepting, tells every session goodbye, cuts what lingers and
    /// waits until the listener is closed and every forward has ended.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.shared.cut_all();
        info!(port = self.port, "bastion stopped");
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            self.shared.shutdown.send_replace(true);
            self.shared.cut_all();
            accept.abort();
        }
    }
}

/// What a connection may do: who gets in, and where forwards may go.
struct Policy {
    user_key: PublicKey,
    targets: BTreeMap<String, SocketAddr>,
}

/// State shared by the accept loop, the sessions and their forwards.
struct Shared {
    /// Flipped to true once: every task watching it winds down.
    shutdown: watch::Sender<bool>,
    /// A duplicate of each client socket, so a drop can cut sessions that russh
    /// owns without waiting on them.
    sockets: Mutex<HashMap<u64, std::net::TcpStream>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Keeps a duplicate of `stream`'s socket and hands back the stream.
    fn register(&self, stream: TcpStream) -> std::io::Result<(u64, TcpStream)> {
        let std_stream = stream.into_std()?;
        let duplicate = std_stream.try_clone()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_sockets().insert(id, duplicate);
        Ok((id, TcpStream::from_std(std_stream)?))
    }

    /// Shuts down and forgets one connection's socket.
    fn cut(&self, id: u64) {
        if let Some(socket) = self.lock_sockets().remove(&id) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Shuts down every client socket, which ends its russh session at once.
    fn cut_all(&self) {
        for (_, socket) in self.lock_sockets().drain() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        config.clone(),
                        policy.clone(),
                        shared.clone(),
                    ));
                }
                Err(err) => {
                    warn!(%err, "bastion accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);

    let drained = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        shared.cut_all();
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Runs one SSH session until the client leaves or the bastion shuts down.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    policy: Arc<Policy>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let (id, stream) = match shared.register(stream) {
        Ok(registered) => registered,
        Err(err) => {
            warn!(%peer, %err, "could not track a bastion connection; dropping it");
            return;
        }
    };
    debug!(%peer, "ssh connection accepted");

    let mut shutdown = shared.shutdown.subscribe();
    let handler = SessionHandler { peer, policy, shutdown: shutdown.clone() };
    let session = tokio::select! {
        _ = stopped(&mut shutdown) => None,
        started = russh::server::run_stream(config, stream, handler) => started.ok(),
    };
    if let Some(session) = session {
        let handle = session.handle();
        tokio::pin!(session);
        tokio::select! {
            _ = stopped(&mut shutdown) => {
                let reason = "the sandbox bastion is shutting down".to_string();
                let _ = handle.disconnect(Disconnect::ByApplication, reason, "en".into()).await;
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, &mut session).await;
            }
            result = &mut session => match result {
                Ok(()) => debug!(%peer, "ssh connection closed"),
                Err(err) => debug!(%peer, %err, "ssh connection ended with an error"),
            },
        }
    }

    shared.cut(id);
}

/// Resolves once the bastion is shutting down (or is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One client's view of the bastion.
struct SessionHandler {
    peer: SocketAddr,
    policy: Arc<Policy>,
    shutdown: watch::Receiver<bool>,
}

impl SessionHandler {
    fn is_accepted_key(&self, key: &PublicKey) -> bool {
        key.key_data() == self.policy.user_key.key_data()
    }
}

/// Rejects an attempt and tells the client that only public keys can work.
fn publickey_only() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl russh::server::Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(publickey_only())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        warn!(peer = %self.peer, user, "password login refused: public keys only");
        Ok(publickey_only())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        warn!(peer = %self.peer, user, "keyboard-interactive login refused: public keys only");
        Ok(publickey_only())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_accepted_key(offer.public_key) {
            return Ok(Auth::Accept);
        }
        let fingerprint = offer.public_key.fingerprint(Default::default()).to_string();
        warn!(peer = %self.peer, user, %fingerprint, "unknown public key refused");
        Ok(publickey_only())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_accepted_key(key.public_key) {
            info!(peer = %self.peer, user, "bastion login accepted");
            return Ok(Auth::Accept);
        }
        Ok(publickey_only())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(peer = %self.peer, "session channel refused: this bastion only forwards ports");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = format!("{host_to_connect}:{port_to_connect}");
        let Some(addr) = self.policy.targets.get(&target).copied() else {
            warn!(peer = %self.peer, %target, "forward refused: not a sandbox target");
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        tokio::spawn(forward(channel, reply, target, addr, self.shutdown.clone()));
        Ok(())
    }
}

/// Connects to `addr` for the target, then copies both ways until both sides
/// have finished or the bastion shuts down.
async fn forward(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: String,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            warn!(%target, %addr, %err, "forward failed: the target refused the connection");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        Err(_) => {
            warn!(%target, %addr, "forward failed: the target did not answer in time");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    reply.accept().await;
    debug!(%target, %addr, "forward opened");

    tokio::select! {
        (up, down) = copy_both_ways(channel, tcp) => {
            debug!(%target, bytes_up = up, bytes_down = down, "forward closed");
        }
        _ = stopped(&mut shutdown) => debug!(%target, "forward cut by shutdown"),
    }
}

/// Client-to-target and target-to-client copies; each direction passes its EOF
/// on, and a channel close from the client ends both. Returns the bytes moved
/// each way.
async fn copy_both_ways(channel: Channel<Msg>, tcp: TcpStream) -> (u64, u64) {
    let (mut from_client, to_client) = channel.split();
    let (mut from_target, mut to_target) = tcp.into_split();

    let mut writer = to_client.make_writer();
    let mut downstream = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut from_target, &mut writer).await.unwrap_or(0);
        let _ = writer.shutdown().await; // EOF to the client
        copied
    });

    let mut up = 0u64;
    let mut client_closed = false;
    loop {
        match from_client.wait().await {
            Some(ChannelMsg::Data { data }) => {
                if to_target.write_all(&data).await.is_err() {
                    break;
                }
                up += data.len() as u64;
            }
            Some(ChannelMsg::Eof) => break,
            Some(ChannelMsg::Close) | None => {
                client_closed = true;
                break;
            }
            Some(_) => {}
        }
    }
    let _ = to_target.shutdown().await; // EOF to the target

    // After the client's EOF the target may still answer; a close from the
    // client meanwhile ends the copy.
    let down = if client_closed {
        downstream.abort();
        0
    } else {
        loop {
            tokio::select! {
                copied = &mut downstream => break copied.unwrap_or(0),
                message = from_client.wait() => {
                    if matches!(message, Some(ChannelMsg::Close) | None) {
                        downstream.abort();
                        break 0;
                    }
                }
            }
        }
    };
    let _ = to_client.close().await;
    (up, down)
}
