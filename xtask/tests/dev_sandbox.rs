//! `cargo xtask dev --sandbox` end to end, through the built binary: the whole
//! loop comes up, an event POSTed to rest-api is acknowledged by the worker
//! (asserted in Redis), Ctrl+C stops everything and nothing is left behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{alive, descendants, env_value};

fn redis_cli(port: &str, password: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .expect("redis-cli is missing: install it with `apt-get install -y redis-tools`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dev_sandbox_moves_an_event_end_to_end_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, lines_rx, reader) = common::spawn_dev_sandbox(tmp.path(), &[]);
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();

    // Wait until the worker is ready, noting the sandbox directory on the way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sandbox_dir = None;
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err);
                panic!("dev --sandbox did not get ready within 60 s; stderr:\n{err}")
            });
        if let Some((_, dir)) = line.split_once("files in ") {
            sandbox_dir = Some(std::path::PathBuf::from(dir.trim()));
        }
        if line.starts_with("worker ready") {
            break;
        }
    }
    let sandbox_dir = sandbox_dir.expect("dev --sandbox names its directory");
    assert!(sandbox_dir.starts_with(tmp.path()));
    let env_file = sandbox_dir.join("sandbox.env");
    let children = descendants(pid);
    assert!(children.len() >= 4, "redis-server and three stand-ins: {children:?}");

    // POST an event; the worker must acknowledge it (nothing pending in the group).
    let rest_port = env_value(&env_file, "REST_API_PORT");
    let body = r#"{"kind":"test"}"#;
    let mut http = TcpStream::connect(format!("127.0.0.1:{rest_port}")).unwrap();
    write!(
        http,
        "POST /api/v1/webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 2"), "{reply}");

    let redis_port = env_value(&env_file, "REDIS_TUNNEL_PORT");
    let password = env_value(&env_file, "REDIS_PASSWORD");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let length = redis_cli(&redis_port, &password, &["XLEN", "webhook-events"]);
        let pending = redis_cli(
            &redis_port,
            &password,
            &["XPENDING", "webhook-events", "webhook-processors"],
        );
        let length: u64 = length.trim().parse().unwrap_or(0);
        if length >= 2 && pending.lines().next() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "XLEN {length}, XPENDING {pending}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Ctrl+C: a clean stop, exit 0, nothing left.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGINT)
        .unwrap();
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stdout:\n{}\nstderr:\n{err}", out.join("\n"));
    assert!(out.iter().any(|l| l.contains("processed")), "{out:?}");
    assert!(!err.contains(&password) && !out.iter().any(|l| l.contains(&password)));
    let left: Vec<u32> = children.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!sandbox_dir.exists(), "{} left behind", sandbox_dir.display());
    let state: Vec<_> = std::fs::read_dir(tmp.path().join("state"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "tunnel state left behind: {state:?}");
    for port in [&rest_port, &redis_port] {
        assert!(TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "port {port} still open");
    }
}

#[test]
fn second_ctrl_c_kills_a_stubborn_service_and_says_so_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("stubborn.toml");
    // Both ignore SIGTERM (their `sleep` inherits it): `quick` runs out of its grace, `stubborn`
    // is cut short by the second Ctrl+C, long before its 30 s.
    // Ready only once the trap is set: a SIGTERM before it would end them at once.
    let ignore = r#"command = ["sh", "-c", "trap '' TERM; echo armed; exec sleep 120"]
ready = { log_line = "armed", interval = "50ms", retries = 200 }"#;
    std::fs::write(
        &manifest,
        format!(
            "[services.quick]\n{ignore}\nstop_grace = \"500ms\"\n\n\
             [services.stubborn]\n{ignore}\nstop_grace = \"30s\"\n"
        ),
    )
    .unwrap();
    let manifest = manifest.display().to_string();
    let args = ["--manifest", manifest.as_str(), "--skip-checks"];
    let (mut child, lines_rx, reader) = common::spawn_dev_sandbox(tmp.path(), &args);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stderr = child.stderr.take().unwrap();
    let wait_for = |prefix: &str, child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("no line starting with `{prefix}` within 60 s");
                }
            }
        }
    };
    // Both ready, in either order.
    let first = wait_for("", &mut child);
    let mut ready = 0;
    let mut line = first;
    loop {
        if line.starts_with("stubborn ready") || line.starts_with("quick ready") {
            ready += 1;
        }
        if ready == 2 {
            break;
        }
        line = wait_for("", &mut child);
    }

    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    let ran_out = wait_for("quick ", &mut child);
    let ran_out = if ran_out.starts_with("quick did not") {
        ran_out
    } else {
        wait_for("quick did not", &mut child)
    };
    assert_eq!(ran_out, "quick did not stop within its 0.5 s stop grace: killed");
    let forced_at = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let took = forced_at.elapsed();
    let out = reader.join().unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let shown = format!("stdout:\n{}\nstderr:\n{err}", out.join("\n"));

    assert_eq!(status.code(), Some(0), "{shown}");
    assert!(took < Duration::from_secs(10), "the second Ctrl+C took {took:?} to stop dev");
    let line = out.iter().find(|l| l.starts_with("stubborn killed")).expect(&shown);
    assert!(line.starts_with("stubborn killed at the second Ctrl+C, "), "{line}");
    assert!(line.ends_with(" s into its 30 s stop grace"), "{line}");
    assert!(out.iter().any(|l| l == "all services stopped; killed: quick, stubborn"), "{shown}");
    let warned: Vec<&str> = err.lines().filter(|l| l.contains("service killed")).collect();
    let stubborn = warned.iter().find(|l| l.contains("stubborn")).expect(&shown);
    assert!(stubborn.contains("a second stop request forced it"), "{shown}");
    let quick = warned.iter().find(|l| l.contains("quick")).expect(&shown);
    assert!(quick.contains("killed after its grace period"), "{shown}");
}
