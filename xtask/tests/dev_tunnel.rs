//! `cargo xtask dev` against real OpenSSH sshd and redis-server: the tunnel it
//! runs is seen by `tunnel status`, an outage prints one line when it starts
//! and one when it recovers while the services keep running, and TLS is
//! verified as the endpoint's name before the services are told to skip it.

use mesh_testkit::{free_port, KeyType, RedisServer, Sshd};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An env file pointing `dev` at this sshd and Redis.
fn env_file(dir: &Path, sshd: &Sshd, redis: &RedisServer, extra: &str) -> std::path::PathBuf {
    let path = dir.join("dev.env");
    let text = format!(
        "BASTION_HOST_IP=127.0.0.1\nBASTION_PORT={}\nBASTION_USER={}\nBASTION_KEY_FILE={}\n\
         BASTION_KNOWN_HOSTS={}\nELASTICACHE_ENDPOINT=127.0.0.1:{}\nREDIS_PASSWORD={}\n\
         REDIS_TUNNEL_PORT={}\nTUNNEL_KEEPALIVE_INTERVAL=1\nTUNNEL_KEEPALIVE_COUNT=2\n{extra}",
        sshd.port(),
        sshd.user(),
        sshd.user_key().private_path.display(),
        sshd.known_hosts().display(),
        redis.port(),
        redis.password().unwrap().expose(),
        free_port(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn manifest(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("services.toml");
    std::fs::write(&path, "[services.app]\ncommand = [\"sleep\", \"300\"]\ncwd = \".\"\n").unwrap();
    path
}

/// Starts `dev` and returns it with a channel of its stdout and stderr lines.
fn start_dev(dir: &Path, env: &Path, manifest: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .arg("--env-file")
        .arg(env)
        .arg("dev")
        .arg("--manifest")
        .arg(manifest)
        .env("XTASK_STATE_DIR", dir.join("state"))
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env_remove("SSH_AUTH_SOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
    });
    std::thread::spawn(move || {
        BufReader::new(err).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(l)))
    });
    (child, rx)
}

/// Waits for a line containing `needle`; panics with every line seen otherwise.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return;
        }
    }
    panic!("no line with {needle:?} within 30 s; saw:\n{}", seen.join("\n"));
}

fn interrupt(child: &mut Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    child.wait().unwrap().code()
}

#[test]
fn dev_tunnel_outage_is_one_line_down_and_one_line_up_while_services_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    let redis = RedisServer::builder().password("dev-secret-1").start();
    let env = env_file(dir.path(), &sshd, &redis, "");
    let (mut dev, lines) = start_dev(dir.path(), &env, &manifest(dir.path()));
    let mut seen = Vec::new();
    wait_for(&lines, "redis: PONG", &mut seen);
    wait_for(&lines, "app ready", &mut seen);

    // `tunnel status` sees the tunnel `dev` runs.
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("--env-file")
        .arg(&env)
        .args(["tunnel", "status", "--json"])
        .env("XTASK_STATE_DIR", dir.path().join("state"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));

    sshd.stop();
    wait_for(&lines, "tunnel down", &mut seen);
    sshd.start();
    wait_for(&lines, "tunnel back up", &mut seen);

    assert_eq!(interrupt(&mut dev), Some(0), "{}", seen.join("\n"));
    seen.extend(lines.try_iter());
    let downs = seen.iter().filter(|l| l.contains("tunnel down")).count();
    let ups = seen.iter().filter(|l| l.contains("tunnel back up")).count();
    assert_eq!((downs, ups), (1, 1), "{}", seen.join("\n"));
    assert!(!seen.iter().any(|l| l.contains("app exited")), "{}", seen.join("\n"));
    assert!(!seen.iter().any(|l| l.contains("dev-secret-1")));
}

#[test]
fn dev_verifies_tls_as_the_endpoint_then_tells_services_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    let redis = RedisServer::builder().password("dev-secret-2").tls("cache.internal.test").start();
    let tls = redis.tls().unwrap();
    // The bastion resolves the endpoint's name; here it is only reachable as 127.0.0.1, so the
    // endpoint stays an address for the forward while TLS verifies the certificate's DNS name.
    let extra = format!("REDIS_TLS_ENABLED=true\nREDIS_CA_CERT={}\n", tls.ca_cert.display());
    let env = env_file(dir.path(), &sshd, &redis, &extra);
    let (mut dev, lines) = start_dev(dir.path(), &env, &manifest(dir.path()));
    let mut seen = Vec::new();
    wait_for(&lines, "error:", &mut seen);
    let code = dev.wait().unwrap().code();
    seen.extend(lines.try_iter());
    // 127.0.0.1 is not a name the certificate holds: dev must refuse, naming the names it holds.
    assert_eq!(code, Some(1), "{}", seen.join("\n"));
    let all = seen.join("\n");
    assert!(all.contains("cache.internal.test"), "{all}");
    assert!(!all.contains("app ready"), "{all}");
}

#[test]
fn dev_with_tls_verified_as_the_endpoint_name_starts_services_with_skip_verify() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    // `localhost` is a name the bastion (sshd) resolves to the Redis on 127.0.0.1.
    let redis = RedisServer::builder().password("dev-secret-3").tls("localhost").start();
    let tls = redis.tls().unwrap();
    let extra = format!(
        "ELASTICACHE_ENDPOINT=rediss://localhost:{}\nREDIS_CA_CERT={}\n",
        redis.port(),
        tls.ca_cert.display()
    );
    let env = env_file(dir.path(), &sshd, &redis, &extra);
    let manifest = dir.path().join("services.toml");
    std::fs::write(
        &manifest,
        // The [env] block is the default services.toml's: it must see what `dev` decided.
        "[env]\nREDIS_TLS_ENABLED = \"${REDIS_TLS_ENABLED:-false}\"\n\
         REDIS_TLS_SKIP_VERIFY = \"${REDIS_TLS_SKIP_VERIFY:-false}\"\n\
         [services.app]\nshell = \"echo skip=$$REDIS_TLS_SKIP_VERIFY tls=$$REDIS_TLS_ENABLED; sleep 300\"\n\
         cwd = \".\"\nready = { log_line = \"skip=\" }\n",
    )
    .unwrap();
    let (mut dev, lines) = start_dev(dir.path(), &env, &manifest);
    let mut seen = Vec::new();
    wait_for(&lines, "TLS on, certificate verified as localhost", &mut seen);
    wait_for(&lines, "app ready", &mut seen);
    assert_eq!(interrupt(&mut dev), Some(0), "{}", seen.join("\n"));
    seen.extend(lines.try_iter());
    let all = seen.join("\n");
    assert!(all.contains("skip=true tls=true"), "{all}");
    assert!(all.contains("warning: REDIS_TLS_SKIP_VERIFY=true for the services"), "{all}");
}
