//! Opening a connection to Redis (TCP, then TLS as the endpoint's name), authenticating, and
//! naming precisely why any of it failed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Phase, ProbeError};
use crate::resp::{self, Frame, Malformed, Value};
use crate::target::{Route, Target, TlsMode};
use crate::tls;

/// What a running tunnel can tell about a connection it closed at once.
///
/// The tunnel accepts our TCP connection before it asks the bastion for a channel to the
/// endpoint; when the bastion cannot reach the endpoint, all we see is the connection closing.
/// The tunnel records why (its last channel error), and this is how a check asks for it.
pub trait TunnelDiagnosis: Sync {
    /// Why the tunnel's last channel to the endpoint failed, if it failed at or after `since`.
    /// May block briefly (it asks the tunnel's control socket).
    fn channel_error_since(&self, since: SystemTime) -> Option<String>;
}

/// No tunnel to ask (the direct route, or no tunnel running).
pub struct NoTunnel;

impl TunnelDiagnosis for NoTunnel {
    fn channel_error_since(&self, _since: SystemTime) -> Option<String> {
        None
    }
}

/// A reason the caller already has (or a fake, in tests).
pub struct KnownChannelError(pub Option<String>);

impl TunnelDiagnosis for KnownChannelError {
    fn channel_error_since(&self, _since: SystemTime) -> Option<String> {
        self.0.clone()
    }
}

/// A plain or TLS connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A low-level failure, before it is explained with the target's context.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The peer closed (or reset) the connection; `received_any` says whether it ever answered.
    Closed {
        received_any: bool,
    },
    Malformed(Malformed),
    Timeout,
    Io(io::Error),
}

/// An error reply: `-CODE detail`.
#[derive(Debug, Clone)]
pub(crate) struct ServerError {
    pub code: String,
    pub detail: String,
}

impl ServerError {
    fn from_frame(bytes: &[u8]) -> ServerError {
        let line = String::from_utf8_lossy(&bytes[1..bytes.len().saturating_sub(2)]).into_owned();
        match line.split_once(' ') {
            Some((code, detail)) => ServerError { code: code.into(), detail: detail.into() },
            None => ServerError { code: line, detail: String::new() },
        }
    }

    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.detail).trim().to_string()
    }
}

/// What [`Conn::skip_replies`] saw.
pub(crate) struct Skipped {
    pub errors: usize,
    /// The first error reply's text.
    pub first_error: Option<String>,
}

/// A connection with a read buffer that frames RESP replies.
pub(crate) struct Conn {
    stream: Stream,
    /// Bytes read and not yet consumed start at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Whether the server ever sent a byte: a close before that is diagnosed, after it is not.
    received_any: bool,
    /// The limit on each write and read; `None` when the caller bounds a whole exchange itself
    /// (the load generator: one timer per batch instead of one per system call).
    timeout: Option<Duration>,
}

impl Conn {
    fn new(stream: Stream, timeout: Duration) -> Conn {
        let timeout = Some(timeout);
        Conn { stream, buf: Vec::with_capacity(64 * 1024), start: 0, received_any: false, timeout }
    }

    /// Stops bounding each read and write; the caller bounds whole exchanges instead.
    pub fn without_timeouts(mut self) -> Conn {
        self.timeout = None;
        self
    }

    /// Writes `bytes` in full.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let received_any = self.received_any;
        let write = limited(self.timeout, self.stream.write_all(bytes));
        match write.await {
            Err(_) => Err(Failure::Timeout),
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) if is_close(&err) => Err(Failure::Closed { received_any }),
            Ok(Err(err)) => Err(Failure::Io(err)),
        }
    }

    /// Waits for the next complete reply and consumes it; returns its frame and bytes.
    pub async fn next_reply(&mut self) -> Result<(Frame, &[u8]), Failure> {
        loop {
            match resp::frame(&self.buf[self.start..]) {
                Err(malformed) => return Err(Failure::Malformed(malformed)),
                Ok(Some(frame)) => {
                    let at = self.start;
                    self.start += frame.len;
                    return Ok((frame, &self.buf[at..at + frame.len]));
                }
                Ok(None) => self.fill().await?,
            }
        }
    }

    /// Consumes `count` replies, counting error replies (the load generator's loop).
    pub async fn skip_replies(&mut self, count: usize) -> Result<Skipped, Failure> {
        let mut skipped = Skipped { errors: 0, first_error: None };
        let mut left = count;
        while left > 0 {
            match resp::frame(&self.buf[self.start..]) {
                Err(malformed) => return Err(Failure::Malformed(malformed)),
                Ok(Some(frame)) => {
                    if frame.error {
                        skipped.errors += 1;
                        if skipped.first_error.is_none() {
                            let bytes = &self.buf[self.start..self.start + frame.len];
                            skipped.first_error = Some(ServerError::from_frame(bytes).text());
                        }
                    }
                    self.start += frame.len;
                    left -= 1;
                }
                Ok(None) => self.fill().await?,
            }
        }
        Ok(skipped)
    }

    /// Reads more bytes, first dropping what was consumed.
    async fn fill(&mut self) -> Result<(), Failure> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 32 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(16 * 1024);
        let received_any = self.received_any;
        match limited(self.timeout, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Ok(0)) => Err(Failure::Closed { received_any }),
            Ok(Ok(_)) => {
                self.received_any = true;
                Ok(())
            }
            Ok(Err(err)) if is_close(&err) => Err(Failure::Closed { received_any }),
            Ok(Err(err)) => Err(Failure::Io(err)),
        }
    }

    /// Sends one command and decodes its reply; an error reply is `Ok(Err(..))`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Result<Value, ServerError>, Failure> {
        self.send(&resp::encode(args)).await?;
        let (frame, bytes) = self.next_reply().await?;
        if frame.error {
            return Ok(Err(ServerError::from_frame(bytes)));
        }
        match resp::decode(bytes) {
            Ok(Some((value, _))) => Ok(Ok(value)),
            // The frame was whole, so a decoder wanting more bytes disagrees with it.
            Ok(None) => Err(Failure::Malformed(Malformed {
                seen: resp::printable(bytes),
                reason: "a reply the decoder could not finish",
            })),
            Err(err) => Err(Failure::Malformed(Malformed {
                seen: format!("{}: {}", err.seen, err.reason),
                reason: err.reason,
            })),
        }
    }
}

/// `future` within `limit`, if any; `Err(())` when the limit passed.
async fn limited<T>(
    limit: Option<Duration>,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ()> {
    match limit {
        Some(limit) => timeout(limit, future).await.map_err(|_| ()),
        None => Ok(future.await),
    }
}

fn is_close(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// An open, authenticated connection, and what it takes to explain a later failure.
pub struct Session<'d> {
    pub(crate) conn: Conn,
    pub(crate) target: Target,
    diagnosis: &'d dyn TunnelDiagnosis,
    /// When the connection attempt started: tunnel errors before it are not ours.
    since: SystemTime,
    /// The round trip of the PING that proved the connection.
    pub(crate) first_rtt: Duration,
}

impl<'d> Session<'d> {
    /// Connects, speaks TLS when configured, authenticates and PINGs, naming any failure.
    pub async fn open(
        target: &Target,
        diagnosis: &'d dyn TunnelDiagnosis,
    ) -> Result<Session<'d>, ProbeError> {
        let since = SystemTime::now();
        let config = tls::client_config(&target.tls)?;
        let tcp = dial(target).await?;
        let stream = match config {
            None => Stream::Plain(tcp),
            Some(config) => handshake(tcp, config, target, diagnosis, since).await?,
        };
        let conn = Conn::new(stream, target.timeout);
        let mut session =
            Session { conn, target: target.clone(), diagnosis, since, first_rtt: Duration::ZERO };
        session.hello().await?;
        Ok(session)
    }

    /// PING first (no secret goes to something that is not Redis), AUTH when configured, then
    /// PING again as the authenticated user.
    async fn hello(&mut self) -> Result<(), ProbeError> {
        let started = Instant::now();
        let first = self.call_raw(&[b"PING"], "PING").await?;
        self.first_rtt = started.elapsed();
        let needs_auth = matches!(&first, Err(e) if e.code == "NOAUTH");
        match (&first, &self.target.password) {
            (Err(e), _) if !needs_auth => return Err(self.server_error(e, "PING")),
            (Err(_), None) => return Err(ProbeError::NoAuth { target: self.target.describe() }),
            (Ok(_), None) => return Ok(()),
            (_, Some(_)) => self.auth().await?,
        }

        let started = Instant::now();
        match self.call_raw(&[b"PING"], "PING").await? {
            Ok(_) => {
                self.first_rtt = started.elapsed();
                Ok(())
            }
            Err(e) => Err(self.server_error(&e, "PING")),
        }
    }

    async fn auth(&mut self) -> Result<(), ProbeError> {
        let Some(password) = self.target.password.clone() else { return Ok(()) };
        let user = self.target.username.clone();
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        auth.extend(user.as_deref().map(str::as_bytes));
        auth.push(password.expose().as_bytes());
        match self.call_raw(&auth, "AUTH").await? {
            Ok(_) => Ok(()),
            Err(e) if e.code == "WRONGPASS" || e.detail.contains("invalid password") => {
                Err(ProbeError::WrongPass {
                    target: self.target.describe(),
                    user: self.target.username.clone(),
                    whitespace: password.has_outer_whitespace(),
                })
            }
            Err(e)
                if e.detail.contains("without any password configured")
                    || e.detail.contains("no password is set") =>
            {
                Err(ProbeError::PasswordNotExpected { target: self.target.describe() })
            }
            Err(e) => Err(self.server_error(&e, "AUTH")),
        }
    }

    /// Runs a command and returns its value, any error reply classified.
    pub(crate) async fn call(&mut self, args: &[&[u8]], name: &str) -> Result<Value, ProbeError> {
        match self.call_raw(args, name).await? {
            Ok(value) => Ok(value),
            Err(e) => Err(self.server_error(&e, name)),
        }
    }

    /// Runs a command; an error reply is returned for the caller to judge.
    pub(crate) async fn call_raw(
        &mut self,
        args: &[&[u8]],
        name: &str,
    ) -> Result<Result<Value, ServerError>, ProbeError> {
        match self.conn.call(args).await {
            Ok(reply) => Ok(reply),
            Err(failure) => Err(self.explain(failure).await),
        }
        .inspect_err(|err| tracing::debug!(command = name, class = err.class(), "command failed"))
    }

    pub(crate) fn server_error(&self, e: &ServerError, command: &str) -> ProbeError {
        let target = self.target.describe();
        match e.code.as_str() {
            "NOAUTH" => ProbeError::NoAuth { target },
            "NOPERM" => ProbeError::NoPerm {
                target,
                user: self.target.username.clone(),
                command: command.to_string(),
            },
            _ => ProbeError::Server { target, command: command.to_string(), detail: e.text() },
        }
    }

    /// The connection itself, for a loop that frames replies without decoding them.
    pub(crate) fn into_conn(self) -> Conn {
        self.conn
    }

    /// Turns a low-level failure into its class, asking the server and the tunnel when the
    /// connection closed before any answer.
    pub(crate) async fn explain(&self, failure: Failure) -> ProbeError {
        explain(failure, &self.target, self.diagnosis, self.since).await
    }
}

pub(crate) async fn explain(
    failure: Failure,
    target: &Target,
    diagnosis: &dyn TunnelDiagnosis,
    since: SystemTime,
) -> ProbeError {
    let described = target.describe();
    match failure {
        Failure::Closed { received_any: false } => diagnose_closed(target, diagnosis, since).await,
        Failure::Closed { received_any: true } => ProbeError::Io {
            target: described,
            cause: io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server"),
        },
        Failure::Malformed(m) if target.tls == TlsMode::Off && m.seen.starts_with("15 03") => {
            ProbeError::TlsRequired { target: described }
        }
        Failure::Malformed(m) => ProbeError::NotRedis { target: described, detail: m.seen },
        Failure::Timeout => {
            ProbeError::Timeout { target: described, phase: Phase::Reply, after: target.timeout }
        }
        Failure::Io(cause) => ProbeError::Io { target: described, cause },
    }
}

/// The server closed before answering: TLS-only server, the tunnel's bastion failing, or
/// something unexplained.
async fn diagnose_closed(
    target: &Target,
    diagnosis: &dyn TunnelDiagnosis,
    since: SystemTime,
) -> ProbeError {
    if target.tls == TlsMode::Off && speaks_tls(target).await {
        return ProbeError::TlsRequired { target: target.describe() };
    }
    if let Route::Forward(_) = target.route {
        if let Some(reason) = diagnosis.channel_error_since(since) {
            return ProbeError::BastionUnreachable { endpoint: target.endpoint(), reason };
        }
    }
    ProbeError::ClosedAtOnce { target: target.describe() }
}

/// Opens the TCP connection to the forward or the endpoint, within the timeout.
pub(crate) async fn dial(target: &Target) -> Result<TcpStream, ProbeError> {
    let connect = async {
        let addrs: Vec<std::net::SocketAddr> = match &target.route {
            Route::Forward(addr) => vec![*addr],
            Route::Direct => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|source| ProbeError::Resolve { host: target.host.clone(), cause: source })?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = err,
            }
        }
        Err(connect_error(target, last))
    };
    let stream = match timeout(target.timeout, connect).await {
        Err(_) => {
            let (phase, after) = (Phase::Connect, target.timeout);
            return Err(ProbeError::Timeout { target: target.describe(), phase, after });
        }
        Ok(result) => result?,
    };
    stream
        .set_nodelay(true)
        .map_err(|cause| ProbeError::Connect { target: target.describe(), cause })?;
    Ok(stream)
}

fn connect_error(target: &Target, source: io::Error) -> ProbeError {
    match (&target.route, source.kind()) {
        (Route::Forward(addr), io::ErrorKind::ConnectionRefused) => {
            ProbeError::ForwardRefused { endpoint: target.endpoint(), local_port: addr.port() }
        }
        (Route::Direct, io::ErrorKind::ConnectionRefused) => {
            ProbeError::Refused { target: target.describe() }
        }
        _ => ProbeError::Connect { target: target.describe(), cause: source },
    }
}

async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    target: &Target,
    diagnosis: &dyn TunnelDiagnosis,
    since: SystemTime,
) -> Result<Stream, ProbeError> {
    let name = tls::server_name(target)?;
    let connect = TlsConnector::from(config).connect(name, tcp);
    match timeout(target.timeout, connect).await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
        Ok(Err(err)) => {
            if let Some(classified) = tls::classify(&err, target) {
                return Err(classified);
            }
            if is_close(&err) {
                if speaks_plain_resp(target).await {
                    return Err(ProbeError::TlsNotSpoken { target: target.describe() });
                }
                return Err(diagnose_closed(target, diagnosis, since).await);
            }
            Err(ProbeError::Tls { target: target.describe(), detail: err.to_string() })
        }
        Err(_) => {
            // A plain Redis waits for a line end that a ClientHello may never contain.
            if speaks_plain_resp(target).await {
                return Err(ProbeError::TlsNotSpoken { target: target.describe() });
            }
            let phase = Phase::TlsHandshake;
            Err(ProbeError::Timeout { target: target.describe(), phase, after: target.timeout })
        }
    }
}

/// True when a TLS handshake with the target gets TLS back (any certificate accepted).
async fn speaks_tls(target: &Target) -> bool {
    let Ok(tcp) = dial(target).await else { return false };
    let name = tls::server_name(target)
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("redis").expect("valid"));
    let connect = TlsConnector::from(tls::probe_config()).connect(name, tcp);
    match timeout(target.timeout, connect).await {
        Ok(Ok(_)) => true,
        // An alert or a certificate complaint is still TLS talking.
        Ok(Err(err)) => err.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        Err(_) => false,
    }
}

/// True when a plain PING gets a well-formed RESP reply (any reply, NOAUTH included).
async fn speaks_plain_resp(target: &Target) -> bool {
    let Ok(tcp) = dial(target).await else { return false };
    let mut conn = Conn::new(Stream::Plain(tcp), target.timeout);
    conn.call(&[b"PING"]).await.is_ok()
}
