//! Data through the tunnel against real sshd and redis-server: large values, many
//! connections, end-of-stream in both directions, and recovery after the bastion restarts.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, forward_to, rig, spec, Reply, Resp, PASSWORD};
use mesh_config::Secret;
use mesh_testkit::{free_port, Sshd};
use mesh_tunnel::{State, TunnelError};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_value_round_trips_byte_for_byte() {
    let rig = rig().await;
    let mut value = vec![0u8; 10 * 1024 * 1024];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for byte in value.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *byte = seed as u8;
    }

    let mut conn = Resp::authed(rig.local).await;
    assert_eq!(conn.cmd(&[b"SET", b"big", &value]).await, Reply::Simple("OK".into()));
    let Reply::Bulk(Some(back)) = conn.cmd(&[b"GET", b"big"]).await else {
        panic!("GET big returned no value");
    };
    assert!(back == value, "the value read back differs from the one written");

    let status = rig.tunnel.status();
    let forward = &status.forwards[0];
    assert!(forward.bytes_up >= value.len() as u64, "{forward:?}");
    assert!(forward.bytes_down >= value.len() as u64, "{forward:?}");
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_all_answer_correctly() {
    let rig = rig().await;
    let local = rig.local;
    let clients: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let mut conn = Resp::authed(local).await;
                assert_eq!(conn.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
                let (key, value) = (format!("key:{i}"), format!("value:{i}:{}", "x".repeat(i)));
                let set = conn.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]).await;
                assert_eq!(set, Reply::Simple("OK".into()));
                let got = conn.cmd(&[b"GET", key.as_bytes()]).await;
                assert_eq!(got, Reply::Bulk(Some(value.into_bytes())));
                conn
            })
        })
        .collect();
    let mut open = Vec::new();
    for client in clients {
        open.push(client.await.expect("a client failed"));
    }

    let status = rig.tunnel.status();
    assert_eq!(status.forwards[0].active_connections, 200);
    assert!(status.forwards[0].total_connections >= 200);
    drop(open);
    eventually(Duration::from_secs(5), "connections closed", || {
        rig.tunnel.status().forwards[0].active_connections == 0
    })
    .await;
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_reaches_the_local_client_promptly_while_a_sibling_works() {
    let rig = rig().await;
    let mut victim = Resp::authed(rig.local).await;
    let mut sibling = Resp::authed(rig.local).await;
    let Reply::Integer(id) = victim.cmd(&[b"CLIENT", b"ID"]).await else { panic!("CLIENT ID") };

    let killed = sibling.cmd(&[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()]).await;
    assert_eq!(killed, Reply::Integer(1));
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), victim.stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the killed client saw {read:?} instead of end-of-stream within 2 s"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "end-of-stream took {:?}", start.elapsed());

    assert_eq!(sibling.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_reply_leaves_the_tunnel_healthy() {
    let rig = rig().await;
    let mut writer = Resp::authed(rig.local).await;
    let value = vec![b'v'; 4 * 1024 * 1024];
    assert_eq!(writer.cmd(&[b"SET", b"large", &value]).await, Reply::Simple("OK".into()));

    for _ in 0..5 {
        let mut leaver = Resp::authed(rig.local).await;
        leaver.send(&[b"GET", b"large"]).await;
        let mut first = [0u8; 1024];
        leaver.stream.read_exact(&mut first).await.unwrap();
        // Reset rather than close: the harshest way a client can vanish. A zero linger
        // never blocks on drop, which is what the deprecation warns about.
        let socket = leaver.stream.into_inner();
        #[allow(deprecated)]
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(socket);
    }

    let mut after = Resp::authed(rig.local).await;
    assert_eq!(after.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    let got = after.cmd(&[b"GET", b"large"]).await;
    assert_eq!(got, Reply::Bulk(Some(value)));
    assert_eq!(writer.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(rig.tunnel.status().state, State::Up);
    eventually(Duration::from_secs(5), "vanished connections released", || {
        rig.tunnel.status().forwards[0].active_connections == 2
    })
    .await;
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_bastion_restart_without_user_action() {
    let mut rig = rig().await;
    let mut states = rig.tunnel.watch();
    let mut before = Resp::authed(rig.local).await;
    assert_eq!(before.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));

    rig.sshd.stop();
    // The established connection's channel dies with the session: end-of-stream.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), before.stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "old connection saw {read:?}");
    tokio::time::timeout(
        Duration::from_secs(3),
        states.wait_for(|s| matches!(s, State::Reconnecting { .. })),
    )
    .await
    .expect("state became reconnecting")
    .unwrap();
    let status = rig.tunnel.status();
    assert!(matches!(status.state, State::Reconnecting { .. }), "{status:?}");
    assert!(status.last_error.is_some());

    // A connection arriving during the outage waits for the session instead of failing.
    let local = rig.local;
    let waiting = tokio::spawn(async move {
        let mut conn = Resp::authed(local).await;
        conn.cmd(&[b"PING"]).await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = Instant::now();
    rig.sshd.start();

    tokio::time::timeout(Duration::from_secs(5), states.wait_for(|s| *s == State::Up))
        .await
        .expect("state back to up within the backoff")
        .unwrap();
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "recovery took {:?}",
        restarted.elapsed()
    );
    assert_eq!(waiting.await.unwrap(), Reply::Simple("PONG".into()));
    let mut after = Resp::authed(rig.local).await;
    assert_eq!(after.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    let status = rig.tunnel.status();
    assert_eq!(status.reconnects, 1);
    assert!(status.session_secs.is_some());
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_during_a_long_outage_is_closed_with_the_reason_kept() {
    let mut rig = rig().await;
    let mut states = rig.tunnel.watch();
    rig.sshd.stop();
    tokio::time::timeout(
        Duration::from_secs(3),
        states.wait_for(|s| matches!(s, State::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .unwrap();

    // outage_wait is 8 s in the test spec; the connection must be closed, not hang.
    let mut conn = Resp::connect(rig.local).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(12), conn.stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "expected end-of-stream, got {read:?}");
    let error = rig.tunnel.status().forwards[0].last_channel_error.clone().expect("a reason");
    assert!(error.message.contains("no SSH session"), "{error:?}");
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_the_start_naming_the_bastion_side() {
    common::init_tracing();
    let sshd = Sshd::builder().start();
    let closed_port = free_port();
    let spec = spec(&sshd, vec![forward_to(closed_port)]);
    let err = mesh_tunnel::bind(spec).await.unwrap().start().await.err().expect("start fails");
    assert!(matches!(err, TunnelError::EndpointUnreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("cannot reach the endpoint 127.0.0.1:{closed_port}")));
    assert!(message.contains("security group"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ping_through_the_forward_authenticates_and_names_a_bad_password() {
    let rig = rig().await;
    let rtt = mesh_tunnel::redis_ping(rig.local, None, Some(&Secret::new(PASSWORD))).await;
    assert!(rtt.unwrap() < Duration::from_secs(1));
    let wrong = mesh_tunnel::redis_ping(rig.local, None, Some(&Secret::new("nope"))).await;
    let err = wrong.expect_err("a wrong password fails");
    assert!(matches!(err, mesh_tunnel::PingError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("nope"), "the password leaked: {err}");
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_serializes_state_counters_and_bastion() {
    let rig = rig().await;
    let mut conn = Resp::authed(rig.local).await;
    conn.cmd(&[b"PING"]).await;
    let json = serde_json::to_value(rig.tunnel.status()).unwrap();
    assert_eq!(json["state"], "up");
    assert_eq!(json["pid"], std::process::id());
    assert!(json["bastion"]
        .as_str()
        .unwrap()
        .ends_with(&format!("@127.0.0.1:{}", rig.sshd.port())));
    assert!(json["forwards"][0]["bytes_up"].as_u64().unwrap() > 0);
    assert_eq!(json["forwards"][0]["active_connections"], 1);
    let rtt = json["keepalive_rtt_ms"].as_f64().expect("a keepalive round trip measured");
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    assert_eq!(json["reconnects"], 0);
    drop(conn);
    rig.tunnel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_does_not_hold_up_its_siblings() {
    let rig = rig().await;
    let mut writer = Resp::authed(rig.local).await;
    let value = vec![b's'; 16 * 1024 * 1024];
    assert_eq!(writer.cmd(&[b"SET", b"huge", &value]).await, Reply::Simple("OK".into()));

    // Asks for 16 MB and never reads: far more than socket buffers and russh's queue hold.
    let mut staller = Resp::authed(rig.local).await;
    staller.send(&[b"GET", b"huge"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut sibling = Resp::authed(rig.local).await;
    let pong = tokio::time::timeout(Duration::from_secs(2), sibling.cmd(&[b"PING"])).await;
    assert_eq!(
        pong.expect("a sibling answered while another client stalls"),
        Reply::Simple("PONG".into())
    );
    drop(staller);
    rig.tunnel.shutdown().await;
}

/// A TCP relay to the bastion that can go silent without closing anything: a blackhole,
/// as a dropped route or a sleeping laptop looks from the client's side.
struct Blackhole {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    async fn to(target: std::net::SocketAddr) -> Blackhole {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (f, e) = (frozen.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::TcpStream::connect(target).await.unwrap();
                let born = e.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [(cr, sw), (sr, cw)].map(|(r, w)| (r, w)) {
                    let (f, e) = (f.clone(), e.clone());
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let Ok(n) = from.read(&mut buf).await else { return };
                            while f.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            // A connection from before the outage never comes back to life.
                            if n == 0 || e.load(Ordering::SeqCst) != born {
                                return;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Blackhole { port, frozen, epoch, task }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bastion_is_detected_by_keepalives_and_the_tunnel_recovers() {
    common::init_tracing();
    let sshd = Sshd::builder().host_key_types(&[mesh_testkit::KeyType::Ed25519]).start();
    let redis = mesh_testkit::RedisServer::builder().password(PASSWORD).start();
    let hole = Blackhole::to(sshd.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let key = &sshd.host_keys()[0].public_line;
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {key}\n", hole.port)).unwrap();
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.port = hole.port;
    spec.known_hosts = known_hosts;
    spec.connect_timeout = Duration::from_secs(2);
    let tunnel = mesh_tunnel::bind(spec).await.unwrap().start().await.unwrap();
    let local = common::ipv4_addr(&tunnel);
    let mut states = tunnel.watch();

    hole.freeze();
    let frozen_at = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(8),
        states.wait_for(|s| matches!(s, State::Reconnecting { .. })),
    )
    .await
    .expect("keepalives noticed the silence")
    .unwrap();
    // Keepalive every 1 s, 3 unanswered end the session: a few seconds, never a TCP timeout.
    let noticed = frozen_at.elapsed();
    assert!(noticed >= Duration::from_secs(2), "noticed after only {noticed:?}");
    let reason = tunnel.status().last_error.unwrap_or_default();
    assert!(reason.contains("keepalive"), "{reason}");

    hole.thaw();
    tokio::time::timeout(Duration::from_secs(10), states.wait_for(|s| *s == State::Up))
        .await
        .expect("the tunnel came back after the network did")
        .unwrap();
    let mut conn = Resp::authed(local).await;
    assert_eq!(conn.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    tunnel.shutdown().await;
    hole.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_forbidding_forwarding_is_named_as_its_policy() {
    common::init_tracing();
    let sshd = Sshd::builder().extra_config("AllowTcpForwarding no").start();
    let redis = mesh_testkit::RedisServer::builder().start();
    let spec = spec(&sshd, vec![forward_to(redis.port())]);
    let err = mesh_tunnel::bind(spec).await.unwrap().start().await.err().expect("start fails");
    assert!(matches!(err, TunnelError::EndpointUnreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("AllowTcpForwarding"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_listens_on_both_loopbacks_so_localhost_works_either_way() {
    let rig = rig().await;
    let addrs: Vec<_> = rig.tunnel.local_addrs().into_iter().map(|(_, a)| a).collect();
    let has_ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    assert_eq!(addrs.len(), if has_ipv6 { 2 } else { 1 }, "{addrs:?}");
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == rig.local.port()));
    for addr in addrs {
        let mut conn = Resp::authed(addr).await;
        assert_eq!(conn.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()), "via {addr}");
    }
    rig.tunnel.shutdown().await;
}

/// The two tests that count this process's `mesh-tunnel` threads run one at a time.
static OWN_THREAD_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_on_its_own_thread_forwards_and_ends_the_thread_when_shut_down() {
    let _one_at_a_time = OWN_THREAD_TESTS.lock().await;
    common::init_tracing();
    let sshd = Sshd::builder().start();
    let redis = mesh_testkit::RedisServer::builder().password(PASSWORD).start();
    let tunnel = mesh_tunnel::start_on_own_thread(spec(&sshd, vec![forward_to(redis.port())]))
        .await
        .expect("the tunnel starts on its own thread");
    assert!(thread_names().iter().any(|n| n == "mesh-tunnel"), "{:?}", thread_names());

    let local = common::ipv4_addr(&tunnel);
    let mut conn = Resp::authed(local).await;
    assert_eq!(conn.cmd(&[b"PING"]).await, Reply::Simple("PONG".into()));
    tunnel.shutdown().await;

    assert!(!thread_names().iter().any(|n| n == "mesh-tunnel"), "{:?}", thread_names());
    assert!(std::net::TcpListener::bind(local).is_ok(), "{local} still bound after shutdown");
    assert_eq!(conn.read().await, None, "the open connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_on_its_own_thread_that_fails_to_start_leaves_no_thread() {
    let _one_at_a_time = OWN_THREAD_TESTS.lock().await;
    let sshd = Sshd::builder().start();
    let redis = mesh_testkit::RedisServer::builder().start();
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = tempfile::tempdir().unwrap().path().join("known_hosts");
    let err = mesh_tunnel::start_on_own_thread(spec).await.err().expect("the start fails");
    assert!(matches!(err, TunnelError::UnknownHostKey { .. }), "{err:?}");
    assert!(!thread_names().iter().any(|n| n == "mesh-tunnel"), "{:?}", thread_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_both_ways_so_a_reply_after_end_of_input_arrives() {
    // An endpoint that answers only once its input has ended, then closes: the client's
    // write shutdown must reach it as EOF, and its reply and close must reach the client.
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint_port = endpoint.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        // The tunnel proves each forward with a channel it closes at once: skip that one.
        for conn in endpoint.incoming() {
            let mut conn = conn.unwrap();
            let mut input = Vec::new();
            conn.read_to_end(&mut input).unwrap();
            if !input.is_empty() {
                let reply = format!("read {} bytes until end of input", input.len());
                conn.write_all(reply.as_bytes()).unwrap();
                return;
            }
        }
    });
    common::init_tracing();
    let sshd = Sshd::builder().start();
    let tunnel = mesh_tunnel::bind(spec(&sshd, vec![forward_to(endpoint_port)]))
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut client = tokio::net::TcpStream::connect(common::ipv4_addr(&tunnel)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, &[7u8; 100_000]).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut client).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut reply))
        .await
        .expect("the reply and end-of-stream arrive within 10 s")
        .unwrap();
    assert_eq!(reply, "read 100000 bytes until end of input");
    server.join().unwrap();
    tunnel.shutdown().await;
}
