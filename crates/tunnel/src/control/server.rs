//! The control socket's server side, run inside the tunnel process (the one
//! `tunnel start` runs and the one `dev` starts alike).

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    owned_by_dev, ControlError, HealthReply, PidLock, Reply, Request, StatusReply, TunnelOwner,
    TunnelRecord,
};

/// How long a client may take to send a request line before it is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request line read; anything longer is not ours.
const MAX_REQUEST: usize = 4096;

/// What the control socket needs from a running tunnel. The engine's `Tunnel`
/// implements it; tests use a fake with a fixed status.
pub trait ControlTarget: Send + Sync + 'static {
    /// The engine's status, serialized.
    fn status(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// A Redis PING through the forward.
    fn health(&self) -> impl Future<Output = HealthReply> + Send;
    /// Shut the tunnel down gracefully. May be called more than once.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The control socket being served. Dropping it stops serving and removes the
/// socket, then the pid file (the [`PidLock`] it holds).
#[derive(Debug)]
pub struct ControlGuard {
    socket: PathBuf,
    accept: JoinHandle<()>,
    /// Becomes true once a `stop` request has shut the tunnel down.
    stopped_rx: watch::Receiver<bool>,
    /// Dropped last, after the socket is gone.
    _lock: PidLock,
}

impl ControlGuard {
    /// Resolves once a client's `stop` has shut the tunnel down: the owner
    /// then drops this guard and exits.
    pub async fn stopped(&self) {
        let mut rx = self.stopped_rx.clone();
        // An error means the accept task ended, which only happens on drop.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        self.accept.abort();
        if let Err(error) = std::fs::remove_file(&self.socket) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.socket.display(), %error, "cannot remove control socket");
            }
        }
    }
}

/// Writes `config.json`, binds the control socket (0600) named in `lock`'s
/// state directory and answers requests until the guard is dropped. Call it
/// once every forward is verified: a socket that answers means "started".
pub async fn serve_control<T: ControlTarget>(
    target: Arc<T>,
    lock: PidLock,
    record: TunnelRecord,
) -> Result<ControlGuard, ControlError> {
    let state = lock.state().clone();
    state.create()?;
    state.write_record(&record)?;

    // We hold the lock, so a socket file here is a crashed run's leftover.
    let socket = state.socket.clone();
    let io_err = |source| ControlError::Io { path: socket.clone(), source };
    match std::fs::remove_file(&socket) {
        Ok(()) => tracing::info!(path = %socket.display(), "removed stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(&socket).map_err(io_err)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    tracing::info!(path = %socket.display(), "control socket ready");

    let (stopped_tx, stopped_rx) = watch::channel(false);
    let shared = Arc::new(Shared { target, record, stopped_tx });
    let accept = tokio::spawn(accept_loop(listener, shared));
    Ok(ControlGuard { socket, accept, stopped_rx, _lock: lock })
}

/// What every connection task shares.
struct Shared<T> {
    target: Arc<T>,
    record: TunnelRecord,
    stopped_tx: watch::Sender<bool>,
}

async fn accept_loop<T: ControlTarget>(listener: UnixListener, shared: Arc<Shared<T>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
            Err(error) => {
                // EMFILE and the like pass; back off so we do not spin.
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<T: ControlTarget>(stream: UnixStream, shared: Arc<Shared<T>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16));
    let mut line = String::new();
    loop {
        line.clear();
        match tokio::time::timeout(REQUEST_TIMEOUT, lines.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(_)) if line.len() > MAX_REQUEST => return,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "control connection read failed");
                return;
            }
        }
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => answer(request, &shared).await,
            Err(e) => Reply::Error { message: format!("bad request: {e}") },
        };
        let mut text = serde_json::to_string(&reply).expect("a reply always serializes");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn answer<T: ControlTarget>(request: Request, shared: &Shared<T>) -> Reply {
    let record = &shared.record;
    tracing::debug!(?request, "control request");
    match request {
        Request::Status => Reply::Status(StatusReply {
            pid: record.pid,
            started_at: record.started_at,
            config: record.clone(),
            tunnel: shared.target.status().await,
        }),
        Request::Health => Reply::Health(shared.target.health().await),
        Request::Stop if record.owner == TunnelOwner::Dev => {
            // `dev` would lose its tunnel and run on without it: it stops it itself.
            tracing::warn!("stop requested over the control socket, refused: dev owns the tunnel");
            Reply::Error { message: owned_by_dev(&record.id, record.pid) }
        }
        Request::Stop => {
            tracing::info!("stop requested over the control socket");
            shared.target.shutdown().await;
            shared.stopped_tx.send_replace(true);
            Reply::Stopped { pid: record.pid }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{request, StateRoot, TunnelId};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tunnel that reports a fixed status and counts shutdowns.
    struct FakeTunnel {
        shutdowns: AtomicUsize,
    }

    impl ControlTarget for FakeTunnel {
        async fn status(&self) -> serde_json::Value {
            serde_json::json!({ "state": "up", "reconnects": 2, "last_error": null })
        }
        async fn health(&self) -> HealthReply {
            HealthReply { ok: true, latency_ms: Some(0.5), detail: "PONG".into() }
        }
        async fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn record(state: &crate::control::StateDir) -> TunnelRecord {
        TunnelRecord {
            id: state.id.to_string(),
            bastion_host: "bastion".into(),
            bastion_port: 22,
            bastion_user: "ec2-user".into(),
            forwards: vec![],
            bind_addrs: vec!["127.0.0.1".parse().unwrap()],
            socket: state.socket.clone(),
            pid: std::process::id(),
            started_at: 1_700_000_000,
            exe: None,
            owner: TunnelOwner::Tunnel,
            detached: false,
        }
    }

    #[tokio::test]
    async fn control_socket_answers_status_health_and_stop_then_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().into(), runtime_dir: None };
        let state = root.tunnel(&TunnelId::new("bastion", 22, "ec2-user", &[]));
        let fake = Arc::new(FakeTunnel { shutdowns: AtomicUsize::new(0) });
        let guard =
            serve_control(fake.clone(), state.lock().unwrap(), record(&state)).await.unwrap();

        let mode = std::fs::metadata(&state.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(state.read_record().unwrap(), record(&state));

        let timeout = Duration::from_secs(5);
        match request(&state.socket, Request::Status, timeout).await.unwrap() {
            Reply::Status(status) => {
                assert_eq!(status.pid, std::process::id());
                assert_eq!(status.state(), Some("up"));
                assert_eq!(status.tunnel["reconnects"], 2);
                assert_eq!(status.config.bastion_user, "ec2-user");
            }
            other => panic!("expected a status reply, got {other:?}"),
        }
        let health = request(&state.socket, Request::Health, timeout).await.unwrap();
        assert!(matches!(health, Reply::Health(HealthReply { ok: true, .. })));

        let stop = request(&state.socket, Request::Stop, timeout).await.unwrap();
        assert_eq!(stop, Reply::Stopped { pid: std::process::id() });
        tokio::time::timeout(timeout, guard.stopped()).await.unwrap();
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 1);

        drop(guard);
        assert!(!state.socket.exists());
        assert!(!state.pid_file.exists());
        assert!(!state.is_locked().unwrap());
        assert!(matches!(
            request(&state.socket, Request::Status, timeout).await,
            Err(ControlError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn control_socket_of_a_dev_tunnel_refuses_stop_and_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().into(), runtime_dir: None };
        let state = root.tunnel(&TunnelId::new("bastion", 22, "ec2-user", &[]));
        let fake = Arc::new(FakeTunnel { shutdowns: AtomicUsize::new(0) });
        let dev = TunnelRecord { owner: TunnelOwner::Dev, ..record(&state) };
        let guard = serve_control(fake.clone(), state.lock().unwrap(), dev).await.unwrap();

        let timeout = Duration::from_secs(5);
        let reply = request(&state.socket, Request::Stop, timeout).await.unwrap();
        let message = format!(
            "tunnel {} belongs to `cargo xtask dev` (pid {}): stop dev with Ctrl+C there",
            state.id,
            std::process::id()
        );
        assert_eq!(reply, Reply::Error { message });
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 0);
        assert!(!*guard.stopped_rx.borrow());
        match request(&state.socket, Request::Status, timeout).await.unwrap() {
            Reply::Status(status) => assert_eq!(status.config.owner, TunnelOwner::Dev),
            other => panic!("expected a status reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn control_socket_rejects_a_bad_request_and_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().into(), runtime_dir: None };
        let state = root.tunnel(&TunnelId::new("bastion", 22, "ec2-user", &[]));
        // A crashed run's socket file is replaced, not an error.
        state.create().unwrap();
        std::fs::write(&state.socket, b"").unwrap();
        let fake = Arc::new(FakeTunnel { shutdowns: AtomicUsize::new(0) });
        let _guard = serve_control(fake, state.lock().unwrap(), record(&state)).await.unwrap();

        let mut stream = UnixStream::connect(&state.socket).await.unwrap();
        stream.write_all(b"{\"cmd\":\"reboot\"}\n{\"cmd\":\"health\"}\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        let first: Reply =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert!(matches!(first, Reply::Error { message } if message.starts_with("bad request: ")));
        let second: Reply =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert!(matches!(second, Reply::Health(_)));
    }
}
