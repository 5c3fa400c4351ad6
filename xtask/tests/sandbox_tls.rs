//! `cargo xtask dev --sandbox --tls` through the built binary: the sandbox's
//! Redis speaks TLS only, `dev` verifies it as the endpoint's name, the
//! stand-ins speak TLS to it through the tunnel, an event POSTed to rest-api is
//! processed by the worker, Ctrl+C stops everything and nothing is left behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{alive, descendants, env_value};

/// Runs the xtask binary with its state and temp dirs inside `tmp`.
fn xtask(tmp: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("TMPDIR", tmp)
        .env("XTASK_STATE_DIR", tmp.join("state"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// The processes whose command line mentions `dir` (redis-server names its
/// config there; the stand-ins run in it).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Everything left in `tmp` but the empty state directory.
fn left_in(tmp: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir(tmp).unwrap().flatten() {
        let path = entry.path();
        let empty_state = path == tmp.join("state")
            && std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty_state {
            left.push(path.display().to_string());
        }
    }
    left
}

/// POSTs `body` to rest-api's webhook route; returns the whole HTTP answer.
fn post_event(port: &str, body: &str) -> String {
    let mut http = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    write!(
        http,
        "POST /api/v1/webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    reply
}

/// The next stdout line, or a panic with stderr once `deadline` passes.
fn next_line(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
    child: &mut std::process::Child,
    waiting_for: &str,
) -> String {
    lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("dev --sandbox --tls: no {waiting_for} in time; stderr:\n{err}")
    })
}

#[test]
fn dev_sandbox_tls_moves_an_event_through_tls_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, lines_rx, reader) = common::spawn_dev_sandbox(tmp.path(), &["--tls"]);
    let pid = child.id();

    // Until the worker is ready: the endpoint, the sandbox directory, dev's TLS verdict.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut endpoint, mut sandbox_dir, mut verified) = (None, None, false);
    loop {
        let line = next_line(&lines_rx, deadline, &mut child, "`worker ready`");
        if let Some((_, rest)) = line.split_once("serving `") {
            endpoint = rest.split_once('`').map(|(name, _)| name.to_string());
        }
        if let Some((_, dir)) = line.split_once("files in ") {
            sandbox_dir = Some(PathBuf::from(dir.trim()));
        }
        if line.starts_with("redis: PONG")
            && line.contains("TLS on, certificate verified as sandbox-")
        {
            verified = true;
        }
        if line.starts_with("worker ready") {
            break;
        }
    }
    let endpoint = endpoint.expect("dev --sandbox names the endpoint");
    let sandbox_dir = sandbox_dir.expect("dev --sandbox names its directory");
    assert!(verified, "dev says it verified the certificate as {endpoint}");
    assert!(sandbox_dir.starts_with(tmp.path()));
    let env_file = sandbox_dir.join("sandbox.env");
    assert_eq!(env_value(&env_file, "REDIS_TLS_ENABLED"), "true");
    let children = descendants(pid);
    assert!(children.len() >= 4, "redis-server and three stand-ins: {children:?}");

    // POST an event; the worker must log it processed, and Redis (over TLS) must hold
    // nothing pending for the group.
    let reply = post_event(&env_value(&env_file, "REST_API_PORT"), r#"{"kind":"tls"}"#);
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    let id = reply
        .split_once(r#""id":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("rest-api answers the event id: {reply}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let processed = format!("worker     | event {id} processed");
    while next_line(&lines_rx, deadline, &mut child, &processed) != processed {}

    let password = env_value(&env_file, "REDIS_PASSWORD");
    let pending = Command::new("redis-cli")
        .args(["--tls", "--cacert", &env_value(&env_file, "REDIS_CA_CERT")])
        .args(["--sni", &endpoint, "-h", "127.0.0.1", "-p"])
        .arg(env_value(&env_file, "REDIS_TUNNEL_PORT"))
        .args(["XPENDING", "webhook-events", "webhook-processors"])
        .env("REDISCLI_AUTH", &password)
        .output()
        .expect("redis-cli is missing: install it with `apt-get install -y redis-tools`");
    let pending = String::from_utf8_lossy(&pending.stdout).into_owned();
    assert_eq!(pending.lines().next(), Some("0"), "XPENDING over TLS: {pending}");

    // Ctrl+C: a clean stop, exit 0, nothing left.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGINT)
        .unwrap();
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let context = format!("stdout:\n{}\nstderr:\n{err}", out.join("\n"));
    assert_eq!(status.code(), Some(0), "{context}");
    let via_tls = format!("(TLS, verified as {endpoint})");
    for role in ["rest-api", "mcp-server", "worker"] {
        let started = format!("{role:<10} | {role} listening on 127.0.0.1:");
        assert!(
            out.iter().any(|l| l.starts_with(&started) && l.ends_with(&via_tls)),
            "{role} speaks TLS verified as the endpoint; {context}"
        );
    }
    assert!(!err.contains(&password) && !out.iter().any(|l| l.contains(&password)));
    let left: Vec<u32> = children.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(processes_under(tmp.path()).is_empty(), "{:?}", processes_under(tmp.path()));
    assert!(left_in(tmp.path()).is_empty(), "left behind: {:?}", left_in(tmp.path()));
}

#[test]
fn fail_tls_without_sandbox_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = xtask(tmp.path(), &["dev", "--tls"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --tls only applies to the sandbox's Redis: add --sandbox, or set \
         REDIS_TLS_ENABLED=true for a real endpoint\n"
    );
}
