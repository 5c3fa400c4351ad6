//! Network-namespace tests (root only, as in CI): a VPC-shaped layout and a silent blackhole.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mesh_testkit::{free_port, KeyType, Link, NetNs, RedisServer, Sshd};

fn wait_accepting(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ssh -L exited early: {status}");
        }
        assert!(Instant::now() < deadline, "ssh -L never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn vpc_redis_is_reachable_only_through_the_bastion() {
    let (bastion, vpc) = (NetNs::new(), NetNs::new());
    let outside = Link::new(None, &bastion);
    let inside = Link::new(Some(&bastion), &vpc);
    let redis = RedisServer::builder().password("vpc pass").netns(&vpc, inside.b_addr()).start();
    let sshd = Sshd::builder()
        .host_key_types(&[KeyType::Ed25519])
        .netns(&bastion, outside.b_addr())
        .start();

    assert_eq!(redis.cli(&["PING"]), "PONG", "redis-cli inside the VPC namespace");
    let direct = TcpStream::connect_timeout(&redis.addr(), Duration::from_secs(1));
    assert!(direct.is_err(), "the test reached {} without the bastion", redis.addr());

    let local = free_port();
    let forward = format!("{local}:{}", redis.addr());
    let mut tunnel = sshd
        .ssh_command()
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &forward])
        .spawn()
        .expect("start ssh -L");
    wait_accepting(local, &mut tunnel);
    let mut stream = TcpStream::connect(("127.0.0.1", local)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"AUTH \"vpc pass\"\r\nPING\r\n").unwrap();
    let mut replies = BufReader::new(&stream).lines();
    let (auth, ping) = (replies.next().unwrap().unwrap(), replies.next().unwrap().unwrap());
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    assert_eq!((auth.as_str(), ping.as_str()), ("+OK", "+PONG"));
}

#[test]
fn cut_link_is_a_silent_blackhole_until_restored() {
    let bastion = NetNs::new();
    let outside = Link::new(None, &bastion);
    let sshd = Sshd::builder()
        .host_key_types(&[KeyType::Ed25519])
        .netns(&bastion, outside.b_addr())
        .start();
    let mut session = sshd
        .ssh_command()
        .args(["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2", "sleep 60"])
        .spawn()
        .expect("start ssh session");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(session.try_wait().unwrap(), None, "session ended before the cut");

    outside.cut();

    // No refusal, no reset: a new connection just times out...
    let err = TcpStream::connect_timeout(&sshd.addr(), Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // ...and the open session only notices through its keepalives.
    let status = wait_exit(&mut session, Duration::from_secs(15)).expect("keepalives noticed");
    assert!(!status.success());

    outside.restore();
    let output = sshd.ssh_command().arg("true").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn namespace_and_links_are_removed_on_drop() {
    let ns = NetNs::new();
    let name = ns.name().to_owned();
    let link = Link::new(None, &ns);
    let addr = link.a_addr().to_string();
    drop(link);
    drop(ns);

    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&name), "{name} left behind");
    let addrs = Command::new("ip").args(["-4", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&addrs.stdout).contains(&addr), "{addr} left behind");
}
