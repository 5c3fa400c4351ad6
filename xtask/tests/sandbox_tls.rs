//! `cargo xtask dev --sandbox --tls` through the built binary: the sandbox's
//! Redis speaks TLS only and `dev` verifies it as the endpoint's name; the
//! stand-ins, which speak plain Redis only, stop it at once with the reason;
//! nothing is left behind.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

// FIXME: the stand-ins speak plain Redis only (crates/sandbox/src/standin.rs
// refuses REDIS_TLS_ENABLED=true, and the sandbox manifest pins it to false), so
// under --tls the first stand-in stops `dev` with the reason. Once they speak
// TLS, this test must instead see the demo event processed and exit 0 on SIGINT.
#[test]
fn dev_sandbox_tls_verifies_the_endpoint_name_then_stops_at_the_plain_stand_ins() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = xtask(tmp.path(), &["dev", "--sandbox", "--tls"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");

    let endpoint = stdout
        .split_once("serving `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| panic!("dev --sandbox names the endpoint; {context}"));
    assert!(endpoint.starts_with("sandbox-"), "{endpoint}");
    let verified = format!("TLS on, certificate verified as {endpoint}");
    assert!(
        stdout.lines().any(|l| l.starts_with("redis: PONG") && l.ends_with(&verified)),
        "{context}"
    );

    let reason = "rest-api: the sandbox's Redis speaks TLS only, and the stand-in services \
                  speak plain Redis only; run `cargo xtask dev --sandbox` without --tls (to try \
                  the TLS Redis alone: `cargo xtask sandbox up --tls` and the steps it prints)";
    assert!(stdout.contains(&format!("rest-api   | error: {reason}")), "{context}");
    assert!(stderr.contains("error: service `rest-api` exited (exit code 1) before it was ready"));
    assert_eq!(out.status.code(), Some(1), "{context}");
    // At once, not after the readiness probe's fifty tries.
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

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
