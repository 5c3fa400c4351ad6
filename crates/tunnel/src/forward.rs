//! One local connection carried over a `direct-tcpip` channel, both ways, with half-close.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::listen::originator;
use crate::status::{ActiveGuard, Counters};
use crate::tunnel::Shared;

/// The local read size: one SSH packet's worth of payload.
const CHUNK: usize = 32 * 1024;

/// Bytes from the endpoint allowed to wait for a slow local client before it is cut off.
const MAX_QUEUED: usize = 64 << 20;

/// Serves one accepted connection to the end; never touches another connection.
pub(crate) async fn serve(shared: Arc<Shared>, index: usize, stream: TcpStream, peer: SocketAddr) {
    let forward = &shared.spec.forwards[index];
    let counters = &shared.counters[index];
    let _active = ActiveGuard::new(counters);
    let _ = stream.set_nodelay(true);

    let Some(channel) = open(&shared, index, peer).await else {
        // Dropping the socket closes it: the client sees end-of-stream, and the reason is
        // kept in the forward's last channel error.
        return;
    };
    tracing::debug!(forward = %forward.name, %peer, "connection forwarded");
    pump(stream, channel, counters).await;
    tracing::debug!(forward = %forward.name, %peer, "connection closed");
}

/// Opens the channel for a connection: waits (bounded) for a session during an outage, and
/// tries once more when the session dies under the first attempt.
async fn open(shared: &Shared, index: usize, peer: SocketAddr) -> Option<Channel<Msg>> {
    let forward = &shared.spec.forwards[index];
    let counters = &shared.counters[index];
    let (origin_host, origin_port) = originator(peer);
    for attempt in 0..2 {
        let Some(live) = shared.wait_for_session().await else {
            let message = format!(
                "no SSH session to the bastion within {}s (reconnecting)",
                shared.spec.outage_wait.as_secs_f32()
            );
            tracing::warn!(forward = %forward.name, %peer, "{message}");
            counters.channel_failed(message);
            return None;
        };
        let opening = live.handle.channel_open_direct_tcpip(
            forward.remote_host.clone(),
            u32::from(forward.remote_port),
            origin_host.clone(),
            origin_port,
        );
        match tokio::time::timeout(shared.spec.channel_open_timeout, opening).await {
            Ok(Ok(channel)) => return Some(channel),
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                let detail = live.signals.channel_failure.lock().unwrap().take();
                let reason = crate::error::open_failure(&reason, detail);
                let message = endpoint_message(shared, index, &reason);
                tracing::warn!(forward = %forward.name, %peer, "{message}");
                counters.channel_failed(message);
                return None;
            }
            Ok(Err(e)) if attempt == 0 && live.handle.is_closed() => {
                tracing::debug!(error = %e, "session died while opening a channel, waiting");
                shared.session_lost(&live);
                continue;
            }
            Ok(Err(e)) => {
                counters.channel_failed(format!("channel open failed: {e}"));
                return None;
            }
            Err(_) => {
                let message = endpoint_message(
                    shared,
                    index,
                    &format!(
                        "no answer within {}s",
                        shared.spec.channel_open_timeout.as_secs_f32()
                    ),
                );
                tracing::warn!(forward = %forward.name, %peer, "{message}");
                counters.channel_failed(message);
                return None;
            }
        }
    }
    None
}

fn endpoint_message(shared: &Shared, index: usize, reason: &str) -> String {
    let forward = &shared.spec.forwards[index];
    crate::TunnelError::EndpointUnreachable {
        forward: forward.name.clone(),
        host: shared.target.host.clone(),
        port: shared.target.port,
        target_host: forward.remote_host.clone(),
        target_port: forward.remote_port,
        reason: reason.to_string(),
    }
    .to_string()
}

/// Copies both ways until the channel closes or the local side fails. A local EOF becomes a
/// channel EOF and a channel EOF a local write shutdown, so half-closed protocols work;
/// a failed side closes the whole connection.
async fn pump(stream: TcpStream, channel: Channel<Msg>, counters: &Counters) {
    let (mut from_client, mut to_client) = stream.into_split();
    let (mut from_channel, to_channel) = channel.split();

    let upstream = async {
        let channel_err = |e: russh::Error| std::io::Error::other(e.to_string());
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                to_channel.eof().await.map_err(channel_err)?;
                return Ok::<(), std::io::Error>(());
            }
            // Waits for window from the bastion: the backpressure towards the endpoint.
            to_channel.data_bytes(buf[..n].to_vec()).await.map_err(channel_err)?;
            counters.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    // The channel is drained at once, so a client that stops reading never holds up russh's
    // session loop (and with it every other connection): what the client's socket does not
    // take at once waits in `backlog` until it is writable; past `MAX_QUEUED` bytes waiting
    // for it, the client is cut off instead.
    let downstream = async {
        let mut backlog: VecDeque<Bytes> = VecDeque::new();
        let mut queued = 0usize;
        let (mut eof, mut closed) = (false, false);
        loop {
            while let Some(front) = backlog.front_mut() {
                match to_client.try_write(front) {
                    Ok(n) => {
                        queued -= n;
                        counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                        if n == front.len() {
                            backlog.pop_front();
                        } else {
                            *front = front.slice(n..);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if backlog.is_empty() {
                if std::mem::take(&mut eof) {
                    to_client.shutdown().await?;
                }
                if closed {
                    return Ok(());
                }
            }
            tokio::select! {
                msg = from_channel.wait(), if !closed => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        queued += data.len();
                        if queued > MAX_QUEUED {
                            let message = format!(
                                "the local client stopped reading: closed after {} MB waited \
                                 for it",
                                MAX_QUEUED >> 20
                            );
                            counters.channel_failed(message.clone());
                            return Err(std::io::Error::other(message));
                        }
                        backlog.push_back(data);
                    }
                    Some(ChannelMsg::Eof) => eof = true,
                    Some(ChannelMsg::Close) | None => closed = true,
                    Some(_) => {}
                },
                ready = to_client.writable(), if !backlog.is_empty() => ready?,
            }
        }
    };
    tokio::pin!(upstream, downstream);

    let mut upstream_done = false;
    let channel_closed = loop {
        tokio::select! {
            result = &mut upstream, if !upstream_done => {
                upstream_done = true;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "client side failed");
                    break false;
                }
            }
            result = &mut downstream => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "client went away");
                }
                break result.is_ok();
            }
        }
    };
    if !channel_closed {
        let _ = to_channel.close().await;
    }
}
