//! Shared helpers for the tunnel's integration tests: specs with short timings against a
//! testkit sshd, and a minimal RESP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_config::Forward;
use mesh_testkit::{RedisServer, Sshd};
use mesh_tunnel::{Tunnel, TunnelSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const PASSWORD: &str = "tunnel-test-pw";

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let Some(filter) = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<tracing_subscriber::filter::Targets>().ok())
    else {
        return;
    };
    let fmt = tracing_subscriber::fmt::layer().with_test_writer();
    let _ = tracing_subscriber::registry().with(fmt).with(filter).try_init();
}

/// A forward to `port` on the bastion's loopback, on a free local port.
pub fn forward_to(port: u16) -> Forward {
    Forward {
        name: "redis".into(),
        local_port: 0,
        remote_host: "127.0.0.1".into(),
        remote_port: port,
    }
}

/// A spec for `sshd` with its user key and known_hosts, and timings short enough for tests.
pub fn spec(sshd: &Sshd, forwards: Vec<Forward>) -> TunnelSpec {
    let mut spec = TunnelSpec::new("127.0.0.1", forwards);
    spec.port = sshd.port();
    spec.user = sshd.user().to_string();
    spec.key_file = Some(sshd.user_key().private_path.clone());
    spec.known_hosts = sshd.known_hosts().to_path_buf();
    spec.agent = None;
    spec.ssh_config = None;
    spec.interactive = false;
    spec.keepalive_interval = Duration::from_secs(1);
    spec.keepalive_count = 3;
    spec.connect_timeout = Duration::from_secs(5);
    spec.channel_open_timeout = Duration::from_secs(3);
    spec.outage_wait = Duration::from_secs(8);
    spec.reconnect_initial = Duration::from_millis(100);
    spec.reconnect_max = Duration::from_millis(800);
    spec
}

/// sshd, a password-protected redis-server and a tunnel between them.
pub struct Rig {
    pub sshd: Sshd,
    pub redis: RedisServer,
    pub tunnel: Tunnel,
    /// The forward's IPv4 loopback address.
    pub local: SocketAddr,
}

pub async fn rig() -> Rig {
    init_tracing();
    let sshd = Sshd::builder().start();
    let redis = RedisServer::builder().password(PASSWORD).start();
    let spec = spec(&sshd, vec![forward_to(redis.port())]);
    let tunnel = mesh_tunnel::bind(spec).await.unwrap().start().await.unwrap();
    let local = ipv4_addr(&tunnel);
    Rig { sshd, redis, tunnel, local }
}

pub fn ipv4_addr(tunnel: &Tunnel) -> SocketAddr {
    tunnel.local_addrs().into_iter().map(|(_, a)| a).find(SocketAddr::is_ipv4).unwrap()
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A bare RESP connection: one command, one reply.
pub struct Resp {
    pub stream: BufReader<TcpStream>,
}

impl Resp {
    pub async fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Resp { stream: BufReader::with_capacity(64 * 1024, stream) }
    }

    /// Connects and authenticates with [`PASSWORD`].
    pub async fn authed(addr: SocketAddr) -> Resp {
        let mut conn = Resp::connect(addr).await;
        assert_eq!(conn.cmd(&[b"AUTH", PASSWORD.as_bytes()]).await, Reply::Simple("OK".into()));
        conn
    }

    pub async fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await.unwrap();
    }

    pub async fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args).await;
        self.read().await.expect("a reply, not end-of-stream")
    }

    /// The next reply, or `None` at end-of-stream.
    pub async fn read(&mut self) -> Option<Reply> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        Some(match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Integer(rest.parse().unwrap()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; len as usize + 2];
                    self.stream.read_exact(&mut data).await.ok()?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n: usize = rest.parse().unwrap();
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(Box::pin(self.read()).await?);
                }
                Reply::Array(items)
            }
            other => panic!("unexpected RESP type {other:?} in {line:?}"),
        })
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes; panics with `what` then.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
