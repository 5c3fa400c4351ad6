//! The control socket's client side: one request, one reply, bounded in time.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ControlError, Reply, Request};

/// Sends `request` to the tunnel listening on `socket` and reads its reply,
/// all within `timeout` (a `stop` waits for the tunnel to shut down, so give
/// it the grace period).
pub async fn request(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Reply, ControlError> {
    let started = Instant::now();
    let timed_out =
        || ControlError::Timeout { path: socket.to_owned(), waited_ms: timeout.as_millis() };
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ControlError::Connect { path: socket.to_owned(), source })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(&request).expect("a request always serializes");
        line.push('\n');
        let io_err = |source| ControlError::Io { path: socket.to_owned(), source };
        write.write_all(line.as_bytes()).await.map_err(io_err)?;

        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await.map_err(io_err)?;
        if reply.is_empty() {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply");
            return Err(io_err(eof));
        }
        serde_json::from_str(reply.trim()).map_err(|e| ControlError::Protocol {
            path: socket.to_owned(),
            detail: format!("{e}: {}", reply.trim()),
        })
    };
    let reply = tokio::time::timeout(timeout, exchange).await.map_err(|_| timed_out())?;
    tracing::debug!(?request, elapsed_ms = started.elapsed().as_millis(), "control reply");
    reply
}
