//! A small blocking Redis client over `std::net::TcpStream`, plain or TLS (sync rustls):
//! connect within a timeout, optionally AUTH, then one command at a time. For callers without
//! an async runtime (the sandbox's stand-in services); the checks and the benchmark use their
//! own connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use mesh_config::Secret;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection, StreamOwned};

use super::{decode, encode, Malformed, Value};
use crate::error::ProbeError;
use crate::target::TlsMode;

/// A failed connection or command. `addr` is always the `host:port` dialled; no variant ever
/// holds a password.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// AUTH was refused (wrong password or user, or the server has no password).
    #[error("Redis at {addr} refused AUTH: {detail}; check REDIS_PASSWORD (and the user)")]
    Auth { addr: String, detail: String },

    /// The server closed the connection.
    #[error("Redis at {addr} closed the connection; check that it is still running")]
    Closed { addr: String },

    /// Nothing accepted the TCP connection.
    #[error(
        "cannot connect to Redis at {addr}: {source}; check that Redis, or the tunnel forwarding \
         to it, listens there"
    )]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// Reading or writing failed after the connection was made.
    #[error("the connection to Redis at {addr} broke: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// What answered does not speak RESP2.
    #[error("{addr} is not Redis: {source}; check the port")]
    Protocol {
        addr: String,
        #[source]
        source: Malformed,
    },

    /// The host name does not resolve.
    #[error("cannot resolve the Redis host of {addr}: {source}; check the host name")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// A command was answered with an error reply.
    #[error("Redis at {addr} answered `{command}` with `{message}`")]
    Server { addr: String, command: String, message: String },

    /// A reply of another shape than the command gives (e.g. no id for XADD).
    #[error("Redis at {addr} answered `{command}` with {reply:?}, which that command never gives")]
    Unexpected { addr: String, command: String, reply: Value },

    /// Connecting, or waiting for a reply, took longer than the timeout.
    #[error("Redis at {addr} did not answer within {after:?}; check that it is up and reachable")]
    Timeout { addr: String, after: Duration },

    /// The TLS handshake failed; `server_name` is the name the certificate was checked against
    /// (the endpoint's, also when `addr` is a local forward).
    #[error("TLS with Redis at {addr} as `{server_name}` failed: {detail}")]
    Tls { addr: String, server_name: String, detail: String },

    /// TLS could not be set up before dialling: the CA file or the system store is unusable.
    #[error("cannot set up TLS for Redis at {addr}: {source}")]
    TlsSetup {
        addr: String,
        #[source]
        source: ProbeError,
    },
}

impl ClientError {
    /// The code of an error reply (`BUSYGROUP`, `NOAUTH`, `WRONGPASS`...), if that is what
    /// this is.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { message, .. } => message.split(' ').next(),
            _ => None,
        }
    }
}

/// One connection to Redis; commands are sent and answered one at a time.
pub struct Client {
    stream: Stream,
    /// `host:port`, for messages.
    addr: String,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    /// The bound on each read and write, reported when it passes.
    timeout: Duration,
}

impl Client {
    /// Connects to `host:port` within `timeout` (per address tried); reads and writes are then
    /// bounded by the same `timeout` until [`Client::set_timeout`] changes it.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Client, ClientError> {
        let (tcp, addr) = dial(host, port, timeout)?;
        bound(&tcp, timeout).map_err(|source| io_error(addr.clone(), source, timeout))?;
        Ok(Client { stream: Stream::Plain(tcp), addr, buf: Vec::new(), timeout })
    }

    /// Like [`Client::connect`], then a TLS handshake that checks the certificate against
    /// `server_name`, not `host`: dial a local forward, verify as the endpoint behind it.
    /// `mode` gives the roots (a CA file or the system store) or skips the check
    /// ([`TlsMode::Insecure`]); [`TlsMode::Off`] connects in plain text. The handshake is
    /// bounded by `timeout` too.
    pub fn connect_tls(
        host: &str,
        port: u16,
        mode: &TlsMode,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let addr = host_port(host, port);
        let config = match crate::tls::client_config(mode) {
            Ok(Some(config)) => config,
            Ok(None) => return Client::connect(host, port, timeout),
            Err(source) => return Err(ClientError::TlsSetup { addr, source }),
        };
        let fail = |detail: String| ClientError::Tls {
            addr: addr.clone(),
            server_name: server_name.to_string(),
            detail,
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|err| fail(format!("it is not a valid TLS server name ({err})")))?;

        let (tcp, addr) = dial(host, port, timeout)?;
        bound(&tcp, timeout).map_err(|source| io_error(addr.clone(), source, timeout))?;
        let tls = handshake(config, name, tcp)
            .map_err(|err| handshake_error(err, &addr, server_name, timeout))?;
        Ok(Client { stream: Stream::Tls(Box::new(tls)), addr, buf: Vec::new(), timeout })
    }

    /// Bounds each later read and write by `timeout` (a blocking command's BLOCK time must fit
    /// in it).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
        bound(self.stream.tcp(), timeout).map_err(|source| self.io(source))
    }

    /// `AUTH [user] password`; a refusal is [`ClientError::Auth`].
    pub fn auth(&mut self, user: Option<&str>, password: &Secret) -> Result<(), ClientError> {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(user.map(str::as_bytes));
        args.push(password.expose().as_bytes());
        match self.cmd(&args) {
            Err(ClientError::Server { addr, message, .. }) => {
                Err(ClientError::Auth { addr, detail: message })
            }
            other => other.map(drop),
        }
    }

    /// Sends one command and waits for its reply; an error reply is [`ClientError::Server`].
    pub fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, ClientError> {
        let request = encode(args);
        let sent = self.stream.write_all(&request).and_then(|()| self.stream.flush());
        sent.map_err(|source| self.io(source))?;
        match self.read_reply()? {
            Value::Error(message) => {
                let command = args.first().map(|name| String::from_utf8_lossy(name));
                let command = command.unwrap_or_default().to_uppercase();
                Err(ClientError::Server { addr: self.addr.clone(), command, message })
            }
            value => Ok(value),
        }
    }

    /// The error for a `reply` to `command` that has the wrong shape, for callers that check it.
    pub fn unexpected(&self, command: &str, reply: &Value) -> ClientError {
        let (addr, command) = (self.addr.clone(), command.to_string());
        ClientError::Unexpected { addr, command, reply: reply.clone() }
    }

    /// Reads until one whole reply is buffered, then decodes and consumes it.
    fn read_reply(&mut self) -> Result<Value, ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match decode(&self.buf) {
                Ok(Some((value, len))) => {
                    self.buf.drain(..len);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ClientError::Protocol { addr: self.addr.clone(), source });
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed { addr: self.addr.clone() }),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.io(err)),
            }
        }
    }

    /// An I/O error as its class: a timeout, a close, or anything else.
    fn io(&self, source: io::Error) -> ClientError {
        io_error(self.addr.clone(), source, self.timeout)
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A TCP connection to the first address of `host:port` that accepts within `timeout`, with
/// Nagle off; also returns `host:port` for messages.
fn dial(host: &str, port: u16, timeout: Duration) -> Result<(TcpStream, String), ClientError> {
    let addr = host_port(host, port);
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(source) => return Err(ClientError::Resolve { addr, source }),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for socket_addr in addrs {
        match TcpStream::connect_timeout(&socket_addr, timeout) {
            Ok(stream) => {
                return match stream.set_nodelay(true) {
                    Ok(()) => Ok((stream, addr)),
                    Err(source) => Err(ClientError::Io { addr, source }),
                };
            }
            Err(err) => last = err,
        }
    }
    match last.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Err(ClientError::Timeout { addr, after: timeout })
        }
        _ => Err(ClientError::Connect { addr, source: last }),
    }
}

/// Bounds each read and write on `tcp` by `timeout` (zero: unbounded).
fn bound(tcp: &TcpStream, timeout: Duration) -> io::Result<()> {
    let bounded = Some(timeout).filter(|t| !t.is_zero());
    tcp.set_read_timeout(bounded)?;
    tcp.set_write_timeout(bounded)
}

/// The TLS handshake on `tcp`, whose read and write timeouts bound it. What rustls refuses
/// comes back inside the `io::Error`, as `complete_io` gives it.
fn handshake(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    mut tcp: TcpStream,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// A failed handshake as a [`ClientError`]: a TLS refusal says what to fix, a socket failure
/// keeps its class.
fn handshake_error(
    source: io::Error,
    addr: &str,
    server_name: &str,
    after: Duration,
) -> ClientError {
    let addr = addr.to_string();
    if let Some(tls) = source.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        let detail = tls_detail(tls, server_name);
        return ClientError::Tls { addr, server_name: server_name.to_string(), detail };
    }
    io_error(addr, source, after)
}

/// An I/O error as its class: a timeout (`after` being the bound), a close, or anything else.
fn io_error(addr: String, source: io::Error, after: Duration) -> ClientError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { addr, after },
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ClientError::Closed { addr },
        _ => ClientError::Io { addr, source },
    }
}

/// What a TLS refusal means for the person configuring the client.
fn tls_detail(err: &rustls::Error, server_name: &str) -> String {
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the certificate is not valid for `{server_name}` ({err}); verify as a name it \
             holds (the endpoint's, never 127.0.0.1)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the certificate was issued by an authority we do not trust ({err}); set \
             REDIS_CA_CERT to the PEM file of the CA that signed it"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "the server does not speak TLS ({err}); set REDIS_TLS_ENABLED=false, or check the \
             port"
        ),
        other => other.to_string(),
    }
}

/// The connection under [`Client`]: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket, for its timeouts.
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server on a free loopback port: reads one command, writes `reply` in
    /// pieces of `piece` bytes, then keeps the socket open until the client is done.
    fn answering(reply: &'static [u8], piece: usize) -> (u16, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut seen = vec![0u8; 1024];
            let n = socket.read(&mut seen).unwrap();
            seen.truncate(n);
            for piece in reply.chunks(piece) {
                socket.write_all(piece).unwrap();
                socket.flush().unwrap();
                thread::sleep(Duration::from_millis(1));
            }
            let _ = socket.read(&mut [0u8; 1]);
            seen
        });
        (port, server)
    }

    #[test]
    fn a_reply_split_over_many_reads_is_decoded_whole() {
        let (port, server) = answering(b"*2\r\n$1\r\na\r\n:7\r\n", 1);
        let mut client = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        let reply = client.cmd(&[b"GET", b"k"]).unwrap();
        assert_eq!(reply, Value::Array(vec![Value::Bulk(b"a".to_vec()), Value::Integer(7)]));
        drop(client);
        assert_eq!(server.join().unwrap(), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn an_error_reply_carries_its_code_and_command() {
        let (port, _server) = answering(b"-BUSYGROUP Consumer Group name already exists\r\n", 5);
        let mut client = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        let err = client.cmd(&[b"xgroup", b"CREATE"]).unwrap_err();
        assert_eq!(err.code(), Some("BUSYGROUP"));
        assert_eq!(
            err.to_string(),
            format!(
                "Redis at 127.0.0.1:{port} answered `XGROUP` with `BUSYGROUP Consumer Group \
                 name already exists`"
            )
        );
    }

    #[test]
    fn a_rejected_auth_is_an_auth_error_without_the_password() {
        let (port, server) = answering(b"-WRONGPASS invalid username-password pair\r\n", 64);
        let mut client = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        let err = client.auth(Some("app"), &Secret::new("hunter2")).unwrap_err();
        let message = err.to_string();
        assert_eq!(
            message,
            format!(
                "Redis at 127.0.0.1:{port} refused AUTH: WRONGPASS invalid username-password \
                 pair; check REDIS_PASSWORD (and the user)"
            )
        );
        assert!(!format!("{message} {err:?}").contains("hunter2"));
        drop(client);
        assert_eq!(server.join().unwrap(), b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$7\r\nhunter2\r\n");
    }

    #[test]
    fn something_else_than_redis_is_a_protocol_error() {
        let (port, _server) = answering(b"SSH-2.0-OpenSSH_9.2\r\n", 64);
        let mut client = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        let err = client.cmd(&[b"PING"]).unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "127.0.0.1:{port} is not Redis: `SSH-2.0-OpenSSH_9.2` is not the Redis protocol \
                 (not a RESP type byte); check the port"
            )
        );
    }

    #[test]
    fn a_silent_server_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = Client::connect("127.0.0.1", port, Duration::from_millis(100)).unwrap();
        let err = client.cmd(&[b"PING"]).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        drop(listener);
    }

    #[test]
    fn a_closed_connection_and_a_refused_one_are_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let closer = thread::spawn(move || drop(listener.accept().unwrap()));
        let mut client = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        closer.join().unwrap();
        let err = client.cmd(&[b"PING"]).unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");

        let err = Client::connect("127.0.0.1", port, Duration::from_secs(5)).err().unwrap();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with(&format!("cannot connect to Redis at 127.0.0.1:{port}: ")));
    }

    /// The name in the TLS test server's certificate; it does not hold 127.0.0.1.
    const ENDPOINT: &str = "cache.mesh.test";

    fn verify_with(server: &mesh_testkit::RedisServer) -> TlsMode {
        TlsMode::Verify { ca_cert: Some(server.tls().unwrap().ca_cert.clone()) }
    }

    #[test]
    fn tls_dials_loopback_and_verifies_the_endpoint_name() {
        let server = mesh_testkit::RedisServer::builder().tls(ENDPOINT).password("s3cret").start();
        let mode = verify_with(&server);
        let timeout = Duration::from_secs(5);
        let mut client =
            Client::connect_tls("127.0.0.1", server.port(), &mode, ENDPOINT, timeout).unwrap();
        client.auth(None, &Secret::new("s3cret")).unwrap();
        assert_eq!(client.cmd(&[b"PING"]).unwrap(), Value::Simple("PONG".into()));
        let big = vec![b'x'; 100_000];
        client.cmd(&[b"SET", b"k", &big]).unwrap();
        assert_eq!(client.cmd(&[b"GET", b"k"]).unwrap(), Value::Bulk(big));
    }

    #[test]
    fn fail_tls_as_another_name_says_which_name_was_checked() {
        let server = mesh_testkit::RedisServer::builder().tls(ENDPOINT).start();
        let (port, timeout) = (server.port(), Duration::from_secs(5));
        let err =
            Client::connect_tls("127.0.0.1", port, &verify_with(&server), "127.0.0.1", timeout)
                .err()
                .unwrap();
        assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
        let message = err.to_string();
        let expected = format!(
            "TLS with Redis at 127.0.0.1:{port} as `127.0.0.1` failed: the certificate is not \
             valid for `127.0.0.1` ("
        );
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.ends_with("verify as a name it holds (the endpoint's, never 127.0.0.1)"));
    }

    #[test]
    fn fail_tls_without_the_ca_points_at_redis_ca_cert() {
        let server = mesh_testkit::RedisServer::builder().tls(ENDPOINT).start();
        let none = TlsMode::Verify { ca_cert: None };
        let timeout = Duration::from_secs(5);
        let err = match Client::connect_tls("127.0.0.1", server.port(), &none, ENDPOINT, timeout) {
            Err(err) => err,
            Ok(_) => panic!("a certificate from a throwaway CA passed the system roots"),
        };
        assert!(matches!(err, ClientError::Tls { .. } | ClientError::TlsSetup { .. }), "{err:?}");
        if let ClientError::Tls { detail, .. } = &err {
            assert!(detail.ends_with("set REDIS_CA_CERT to the PEM file of the CA that signed it"));
        }
    }

    #[test]
    fn insecure_tls_skips_the_certificate_check() {
        let server = mesh_testkit::RedisServer::builder().tls(ENDPOINT).start();
        let timeout = Duration::from_secs(5);
        let mut client = Client::connect_tls(
            "127.0.0.1",
            server.port(),
            &TlsMode::Insecure,
            "127.0.0.1",
            timeout,
        )
        .unwrap();
        assert_eq!(client.cmd(&[b"PING"]).unwrap(), Value::Simple("PONG".into()));
    }

    #[test]
    fn fail_an_unreadable_ca_file_is_a_setup_error_before_dialling() {
        let mode = TlsMode::Verify { ca_cert: Some("/nonexistent/ca.crt".into()) };
        let err = Client::connect_tls("127.0.0.1", 1, &mode, ENDPOINT, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::TlsSetup { .. }), "{err:?}");
        assert!(err.to_string().starts_with(
            "cannot set up TLS for Redis at 127.0.0.1:1: cannot use REDIS_CA_CERT /nonexistent/ca.crt"
        ));
    }

    #[test]
    fn fail_a_silent_server_during_the_handshake_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let timeout = Duration::from_millis(200);
        let err = Client::connect_tls("127.0.0.1", port, &TlsMode::Insecure, ENDPOINT, timeout)
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        drop(listener);
    }
}
