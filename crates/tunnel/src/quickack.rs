//! The bastion's socket, acknowledging every segment at once (TCP_QUICKACK after each read).
//!
//! OpenSSH's sshd leaves Nagle's algorithm on for sessions without a terminal (`ssh -N`, and
//! ours): it holds a small reply while an earlier one is unacknowledged. Linux delays our
//! acknowledgement up to 40 ms when we have nothing to send, so with many clients waiting for
//! replies, one in a hundred waited 40 ms. Linux leaves quick-ack mode on its own heuristics,
//! hence the option is set again after every read that brought data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A `TcpStream` that re-arms TCP_QUICKACK after each read with data.
pub(crate) struct QuickAck(pub TcpStream);

impl QuickAck {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn rearm(&self) {
        // Best effort: a failure only brings back delayed acknowledgements.
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
    }

    /// FIXME: macOS has no TCP_QUICKACK; there a reply held by the bastion's Nagle waits for
    /// the delayed acknowledgement (up to 40 ms at the 99th percentile with many clients).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn rearm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.0).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.rearm();
        }
        result
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
