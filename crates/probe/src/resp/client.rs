//! A small blocking Redis client over `std::net::TcpStream`: connect within a timeout,
//! optionally AUTH, then one command at a time. For callers without an async runtime (the
//! sandbox's stand-in services); the checks and the benchmark use their own connection.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use mesh_config::Secret;

use super::{decode, encode, Malformed, Value};

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
    stream: TcpStream,
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
        let addr =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve { addr: addr.clone(), source })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for socket_addr in addrs {
            match TcpStream::connect_timeout(&socket_addr, timeout) {
                Ok(stream) => {
                    let mut client = Client { stream, addr, buf: Vec::new(), timeout };
                    client.stream.set_nodelay(true).map_err(|source| client.io(source))?;
                    client.set_timeout(timeout)?;
                    return Ok(client);
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

    /// Bounds each later read and write by `timeout` (a blocking command's BLOCK time must fit
    /// in it).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
        let bounded = Some(timeout).filter(|t| !t.is_zero());
        self.stream.set_read_timeout(bounded).map_err(|source| self.io(source))?;
        self.stream.set_write_timeout(bounded).map_err(|source| self.io(source))
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
        self.stream.write_all(&encode(args)).map_err(|source| self.io(source))?;
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
        let addr = self.addr.clone();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout { addr, after: self.timeout }
            }
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ClientError::Closed { addr },
            _ => ClientError::Io { addr, source },
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
}
