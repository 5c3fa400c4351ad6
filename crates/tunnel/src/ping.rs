//! A Redis health check through a forward: AUTH when configured, then PING, timed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_config::Secret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::PingError;

/// Bounds the whole check, connect included.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` (a forward's local address), authenticates when a password is given
/// (with `username` for an ACL user), sends PING and returns the PING round trip.
pub async fn redis_ping(
    addr: SocketAddr,
    username: Option<&str>,
    password: Option<&Secret>,
) -> Result<Duration, PingError> {
    tokio::time::timeout(PING_TIMEOUT, ping_inner(addr, username, password))
        .await
        .map_err(|_| PingError::Timeout { addr, after: PING_TIMEOUT })?
}

async fn ping_inner(
    addr: SocketAddr,
    username: Option<&str>,
    password: Option<&Secret>,
) -> Result<Duration, PingError> {
    let stream =
        TcpStream::connect(addr).await.map_err(|source| PingError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);

    if let Some(password) = password {
        let mut args = vec!["AUTH".as_bytes()];
        if let Some(user) = username {
            args.push(user.as_bytes());
        }
        args.push(password.expose().as_bytes());
        let reply = command(&mut stream, addr, &args).await?;
        if !reply.starts_with("+OK") {
            return Err(PingError::Auth { addr, message: reply.trim_start_matches('-').into() });
        }
    }

    let start = Instant::now();
    let reply = command(&mut stream, addr, &[b"PING"]).await?;
    let elapsed = start.elapsed();
    if reply != "+PONG" {
        return Err(PingError::Reply { addr, reply });
    }
    Ok(elapsed)
}

/// Sends one command as a RESP array and reads a one-line reply.
async fn command(
    stream: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    args: &[&[u8]],
) -> Result<String, PingError> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    let io_err = |source| PingError::Connect { addr, source };
    stream.get_mut().write_all(&request).await.map_err(io_err)?;
    let mut line = String::new();
    let n = stream.read_line(&mut line).await.map_err(io_err)?;
    if n == 0 {
        return Err(PingError::Closed { addr });
    }
    Ok(line.trim_end().to_string())
}
