//! The tunnel's life: listeners bound first, a verified session, and a supervisor that
//! reconnects forever while the listeners stay up.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::Handle;
use russh::Disconnect;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Credentials;
use crate::listen::{self, Listener};
use crate::session::{self, Client, Session, Signals};
use crate::spec::{Target, TunnelSpec};
use crate::status::{unix_ms, Counters, ForwardStatus, State, Status};
use crate::TunnelError;

/// Every forward's listeners, bound; no network contact yet.
pub struct BoundTunnel {
    spec: Arc<TunnelSpec>,
    target: Target,
    listeners: Vec<Listener>,
}

/// The future of a tunnel's start, boxed: see [`BoundTunnel::start`].
pub type Starting = Pin<Box<dyn Future<Output = Result<Tunnel, TunnelError>> + Send>>;

/// Binds every forward's listeners, before any SSH traffic, so a taken port fails at once.
pub async fn bind(spec: TunnelSpec) -> Result<BoundTunnel, TunnelError> {
    let target = spec.resolve()?;
    let listeners = listen::bind_all(&spec)?;
    Ok(BoundTunnel { spec: Arc::new(spec), target, listeners })
}

impl BoundTunnel {
    /// The bound addresses, with their forward's name (useful when a local port was 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        local_addrs(&self.spec, &self.listeners)
    }

    /// Connects, verifies the host key, authenticates and opens a channel to each forward's
    /// target to prove the bastion reaches it; only then returns the running tunnel.
    ///
    /// The future is boxed behind a function that is never inlined, so the engine's state
    /// machines (russh's session loop, every task spawned from here) are compiled once, in
    /// this crate, with its `opt-level = 3`. Returned as a plain `async fn` future, they were
    /// compiled again, unoptimized, in each calling crate (xtask, mesh-doctor), and `cargo xtask
    /// tunnel start` used 50% more CPU per request than the same engine in BENCH.md.
    #[inline(never)]
    pub fn start(self) -> Starting {
        Box::pin(self.start_here())
    }

    async fn start_here(self) -> Result<Tunnel, TunnelError> {
        let BoundTunnel { spec, target, listeners } = self;
        let credentials = Credentials::load(&target, &spec)?;
        let session = session::connect(&target, &spec, &credentials).await?;
        prove_forwards(&spec, &target, &session).await?;

        let rtt = session::ping(&session.handle, spec.keepalive_interval).await;
        let bound = local_addrs(&spec, &listeners);
        let shared = Arc::new(Shared::new(spec, target, credentials, bound));
        shared.rtt_us.store(rtt.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);

        let Session { handle, signals, ended } = session;
        shared.publish(Live { handle, signals });
        let supervisor = tokio::spawn(supervise(shared.clone(), ended));
        let accept_loops = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(shared.clone(), l.forward, l.listener)))
            .collect();
        tracing::info!(bastion = %shared.target, forwards = shared.spec.forwards.len(), "tunnel up");
        Ok(Tunnel { shared, supervisor: Some(supervisor), accept_loops, runtime: None })
    }
}

fn local_addrs(spec: &TunnelSpec, listeners: &[Listener]) -> Vec<(String, SocketAddr)> {
    listeners
        .iter()
        .filter_map(|l| {
            Some((spec.forwards[l.forward].name.clone(), l.listener.local_addr().ok()?))
        })
        .collect()
}

/// Opens and closes one channel per forward: a forward whose endpoint the bastion cannot
/// reach fails the start instead of failing the first client.
async fn prove_forwards(
    spec: &TunnelSpec,
    target: &Target,
    session: &Session,
) -> Result<(), TunnelError> {
    for forward in &spec.forwards {
        let opening = session.handle.channel_open_direct_tcpip(
            forward.remote_host.clone(),
            u32::from(forward.remote_port),
            "127.0.0.1",
            0,
        );
        let unreachable = |reason: String| TunnelError::EndpointUnreachable {
            forward: forward.name.clone(),
            host: target.host.clone(),
            port: target.port,
            target_host: forward.remote_host.clone(),
            target_port: forward.remote_port,
            reason,
        };
        match tokio::time::timeout(spec.channel_open_timeout, opening).await {
            Ok(Ok(channel)) => {
                let _ = channel.close().await;
            }
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                let detail = session.signals.channel_failure.lock().unwrap().take();
                return Err(unreachable(crate::error::open_failure(&reason, detail)));
            }
            Ok(Err(source)) => {
                return Err(TunnelError::Ssh {
                    host: target.host.clone(),
                    port: target.port,
                    source,
                })
            }
            Err(_) => {
                let secs = spec.channel_open_timeout.as_secs_f32();
                return Err(unreachable(format!("no answer within {secs}s")));
            }
        }
    }
    Ok(())
}

/// A running tunnel. Dropping it aborts its tasks; [`Tunnel::shutdown`] also says goodbye
/// to the bastion.
pub struct Tunnel {
    shared: Arc<Shared>,
    /// Owns the session and reconnects it; `None` once shut down.
    supervisor: Option<JoinHandle<()>>,
    /// One per listener; each owns its connections, so aborting it ends them too.
    accept_loops: Vec<JoinHandle<()>>,
    /// The thread the tasks run on, when started by [`crate::start_on_own_thread`]; dropped
    /// last, after the tasks are aborted.
    pub(crate) runtime: Option<crate::thread::RuntimeThread>,
}

impl Tunnel {
    /// A snapshot of the state and counters.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// State changes as they happen: one `Reconnecting` per attempt, `Up` on recovery.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// The bound addresses, with their forward's name.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.shared.bound.clone()
    }

    /// Closes the listeners and every connection, then the session.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        let accept_loops = std::mem::take(&mut self.accept_loops);
        for task in &accept_loops {
            task.abort();
        }
        for task in accept_loops {
            let _ = task.await;
        }
        if let Some(supervisor) = self.supervisor.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), supervisor).await;
        }
        self.shared.session.send_replace(None);
        self.shared.state.send_replace(State::Stopped);
        tracing::info!(bastion = %self.shared.target, "tunnel stopped");
    }
}

impl Drop for Tunnel {
    /// A tunnel dropped without `shutdown` (a panic, an early return) still frees its ports.
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in &self.accept_loops {
            task.abort();
        }
        if let Some(supervisor) = &self.supervisor {
            supervisor.abort();
        }
    }
}

/// The current session as connections see it.
pub(crate) struct Live {
    pub handle: Handle<Client>,
    pub signals: Arc<Signals>,
}

/// State shared by the supervisor, the accept loops and `status`.
pub(crate) struct Shared {
    pub spec: Arc<TunnelSpec>,
    pub target: Target,
    credentials: Credentials,
    /// The addresses bound, for `status`.
    bound: Vec<(String, SocketAddr)>,
    /// The live session; `None` during an outage. Connections wait on it.
    session: watch::Sender<Option<Arc<Live>>>,
    state: watch::Sender<State>,
    /// Set once by `shutdown`.
    shutdown: watch::Sender<bool>,
    /// One per forward, in the spec's order.
    pub counters: Vec<Counters>,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The last keepalive round trip in microseconds; 0 when unknown.
    rtt_us: AtomicU64,
    started: Instant,
    session_since: Mutex<Option<Instant>>,
}

impl Shared {
    fn new(
        spec: Arc<TunnelSpec>,
        target: Target,
        credentials: Credentials,
        bound: Vec<(String, SocketAddr)>,
    ) -> Shared {
        let counters = spec.forwards.iter().map(|_| Counters::default()).collect();
        Shared {
            spec,
            target,
            credentials,
            bound,
            session: watch::channel(None).0,
            state: watch::channel(State::Up).0,
            shutdown: watch::channel(false).0,
            counters,
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            rtt_us: AtomicU64::new(0),
            started: Instant::now(),
            session_since: Mutex::new(None),
        }
    }

    fn publish(&self, live: Live) {
        *self.session_since.lock().unwrap() = Some(Instant::now());
        self.session.send_replace(Some(Arc::new(live)));
    }

    /// Marks `live` as dead (if it is still the current session), so new connections wait.
    pub fn session_lost(&self, live: &Arc<Live>) {
        self.session.send_if_modified(|current| {
            let same = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, live));
            if same {
                *current = None;
            }
            same
        });
    }

    /// The live session, waiting up to `outage_wait` for one during an outage.
    pub async fn wait_for_session(&self) -> Option<Arc<Live>> {
        let mut rx = self.session.subscribe();
        let waiting = rx.wait_for(|s| s.as_ref().is_some_and(|l| !l.handle.is_closed()));
        let live = match tokio::time::timeout(self.spec.outage_wait, waiting).await {
            Ok(Ok(live)) => live.clone(),
            _ => None,
        };
        live
    }

    fn status(&self) -> Status {
        let forwards = self
            .spec
            .forwards
            .iter()
            .zip(&self.counters)
            .map(|(forward, c)| ForwardStatus {
                name: forward.name.clone(),
                local_port: self
                    .bound
                    .iter()
                    .find(|(name, _)| *name == forward.name)
                    .map_or(forward.local_port, |(_, a)| a.port()),
                remote_host: forward.remote_host.clone(),
                remote_port: forward.remote_port,
                bound: self
                    .bound
                    .iter()
                    .filter(|(name, _)| *name == forward.name)
                    .map(|(_, a)| *a)
                    .collect(),
                bytes_up: c.bytes_up.load(Ordering::Relaxed),
                bytes_down: c.bytes_down.load(Ordering::Relaxed),
                active_connections: c.active.load(Ordering::Relaxed),
                total_connections: c.total.load(Ordering::Relaxed),
                failed_connections: c.failed.load(Ordering::Relaxed),
                last_channel_error: c.last_channel_error.lock().unwrap().clone(),
            })
            .collect();
        let state = self.state.borrow().clone();
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        Status {
            session_secs: match state {
                State::Up => self.session_since.lock().unwrap().map(|t| t.elapsed().as_secs()),
                _ => None,
            },
            state,
            bastion: self.target.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap().clone(),
            keepalive_rtt_ms: (rtt > 0).then(|| rtt as f64 / 1000.0),
            forwards,
        }
    }
}

/// Accepts connections for one listener, each served in its own task owned by this loop.
async fn accept_loop(shared: Arc<Shared>, forward: usize, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(crate::forward::serve(shared.clone(), forward, stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Owns the session: learns of its end at once, then reconnects with capped exponential
/// backoff and jitter, forever, until shutdown.
async fn supervise(shared: Arc<Shared>, mut ended: tokio::sync::oneshot::Receiver<()>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut ticker = tokio::time::interval(shared.spec.keepalive_interval);
    ticker.tick().await;
    loop {
        // Up: measure the round trip each keepalive interval until the session ends.
        let live = shared.session.borrow().clone();
        loop {
            tokio::select! {
                _ = &mut ended => break,
                _ = shutdown.changed() => {
                    if let Some(live) = live {
                        let _ = live.handle.disconnect(Disconnect::ByApplication, "", "en").await;
                    }
                    return;
                }
                _ = ticker.tick() => {
                    let Some(live) = &live else { continue };
                    let limit = shared.spec.keepalive_interval;
                    // The session's end must not wait for an unanswered ping.
                    tokio::select! {
                        rtt = session::ping(&live.handle, limit) => {
                            if let Some(rtt) = rtt {
                                shared.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
                            }
                        }
                        _ = &mut ended => break,
                    }
                }
            }
        }
        let reason = live
            .as_ref()
            .and_then(|l| l.signals.end_reason.lock().unwrap().take())
            .unwrap_or_else(|| "the session ended".to_string());
        tracing::warn!(bastion = %shared.target, %reason, "session lost, reconnecting");
        if let Some(live) = &live {
            shared.session_lost(live);
        }
        shared.rtt_us.store(0, Ordering::Relaxed);
        *shared.last_error.lock().unwrap() = Some(reason.clone());

        match reconnect(&shared, &mut shutdown, reason).await {
            Some(session) => {
                let Session { handle, signals, ended: next } = session;
                shared.publish(Live { handle, signals });
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                shared.state.send_replace(State::Up);
                tracing::info!(bastion = %shared.target, "session re-established");
                ended = next;
            }
            None => return,
        }
    }
}

/// Retries until a session is up (`Some`) or the tunnel is shut down (`None`).
async fn reconnect(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    mut reason: String,
) -> Option<Session> {
    let since_unix_ms = unix_ms();
    let mut delay = shared.spec.reconnect_initial;
    for attempt in 1u32.. {
        // Full jitter over the upper half: many tunnels restarted together spread out.
        let wait = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
        shared.state.send_replace(State::Reconnecting {
            attempt,
            since_unix_ms,
            next_retry_in_ms: wait.as_millis() as u64,
            reason: reason.clone(),
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return None,
        }
        let connecting = session::connect(&shared.target, &shared.spec, &shared.credentials);
        let result = tokio::select! {
            result = connecting => result,
            _ = shutdown.changed() => return None,
        };
        match result {
            Ok(session) => return Some(session),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "reconnect failed");
                reason = e.to_string();
                *shared.last_error.lock().unwrap() = Some(reason.clone());
                delay = (delay * 2).min(shared.spec.reconnect_max);
            }
        }
    }
    None
}
