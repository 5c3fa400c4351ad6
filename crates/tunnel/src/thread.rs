//! A tunnel on its own thread and current-thread runtime, for programs whose own runtime is
//! multi-threaded (`cargo xtask dev`): the forward measured 1.4-1.8x faster there (BENCH.md).

use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::{bind, Starting, Tunnel, TunnelError, TunnelSpec};

/// The thread a tunnel runs on; dropping it ends the thread's runtime and every task on it.
pub(crate) struct RuntimeThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        // The thread only drops its runtime after the signal; joining from inside the
        // runtime it hosts would deadlock, so only join from elsewhere.
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// [`bind`] and [`BoundTunnel::start`](crate::BoundTunnel::start) on a new thread with a
/// current-thread runtime; the returned tunnel keeps that thread, and ends it when it is shut
/// down or dropped. Call it from any tokio runtime. Boxed and never inlined, like
/// [`BoundTunnel::start`](crate::BoundTunnel::start) and for the same reason.
#[inline(never)]
pub fn start_on_own_thread(spec: TunnelSpec) -> Starting {
    Box::pin(start_here(spec))
}

async fn start_here(spec: TunnelSpec) -> Result<Tunnel, TunnelError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| TunnelError::Thread { source })?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("mesh-tunnel".into())
        .spawn(move || {
            // Returns when the sender is dropped; the runtime is dropped here, on its thread.
            let _ = runtime.block_on(stopped);
        })
        .map_err(|source| TunnelError::Thread { source })?;
    let owner = RuntimeThread { stop: Some(stop), thread: Some(thread) };

    let started = handle.spawn(async move { bind(spec).await?.start().await }).await;
    match started {
        Ok(Ok(mut tunnel)) => {
            tunnel.runtime = Some(owner);
            Ok(tunnel)
        }
        Ok(Err(e)) => Err(e),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => unreachable!("the tunnel's start task is never aborted"),
    }
}
