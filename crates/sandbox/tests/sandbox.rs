//! `Sandbox::up`: the env file the dev pipeline reads, and nothing left behind
//! after shutdown or drop.

mod common;

use common::{auth_ping, is_listening, process_exists};
use mesh_sandbox::{Sandbox, SandboxOptions, SANDBOX_ENV_FILE};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

async fn up(parent: &tempfile::TempDir) -> Sandbox {
    common::require_binary("redis-server", "apt-get install -y redis-server redis-tools");
    let options =
        SandboxOptions { parent_dir: Some(parent.path().to_path_buf()), ..Default::default() };
    Sandbox::up(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn env_file_points_every_variable_at_the_sandbox() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up(&parent).await;
    let vars = sandbox.vars();

    // The file says exactly what `vars()` says, and only its owner can read it.
    let env_file = sandbox.env_file();
    assert_eq!(env_file, sandbox.dir().join(SANDBOX_ENV_FILE));
    let from_file: BTreeMap<String, String> =
        dotenvy::from_path_iter(env_file).unwrap().map(Result::unwrap).collect();
    assert_eq!(from_file, vars);
    let mode = std::fs::metadata(env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(sandbox.dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "the sandbox's directory holds a key and a password");

    let bastion = sandbox.bastion().unwrap();
    let redis = sandbox.redis().unwrap();
    assert_eq!(vars["BASTION_HOST_IP"], "127.0.0.1");
    assert_eq!(vars["BASTION_PORT"], bastion.port().to_string());
    assert_eq!(vars["BASTION_USER"], "ec2-user");
    assert_eq!(vars["BASTION_KEY_FILE"], bastion.user_key_path().display().to_string());
    assert_eq!(vars["BASTION_KNOWN_HOSTS"], bastion.known_hosts_path().display().to_string());
    assert_eq!(vars["ELASTICACHE_ENDPOINT"], sandbox.endpoint());
    assert_eq!(vars["REDIS_PASSWORD"], redis.password().expose());
    assert_eq!(vars["ENVIRONMENT"], "development");
    assert_eq!(vars["REDIS_TLS_ENABLED"], "false");
    assert_eq!(vars["REDIS_ADDR"], format!("127.0.0.1:{}", vars["REDIS_TUNNEL_PORT"]));
    for cleared in ["RDS_ENDPOINT", "TUNNEL_EXTRA_FORWARDS", "REDIS_USERNAME"] {
        assert_eq!(vars[cleared], "", "{cleared} must be blanked so the shell cannot set it");
    }

    let endpoint = sandbox.endpoint();
    let label = endpoint.strip_suffix(".serverless.use1.cache.amazonaws.com").unwrap();
    let suffix = label.strip_prefix("sandbox-").unwrap();
    assert_eq!(suffix.len(), 6);
    assert!(suffix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{endpoint}");

    // The password in the env file is the one Redis wants.
    assert_eq!(auth_ping(redis.port(), redis.password()).unwrap(), "+OK\r\n+PONG\r\n");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sandboxes_run_side_by_side() {
    let parent = tempfile::tempdir().unwrap();
    let first = up(&parent).await;
    let second = up(&parent).await;

    assert_ne!(first.endpoint(), second.endpoint());
    assert_ne!(first.vars()["BASTION_PORT"], second.vars()["BASTION_PORT"]);
    assert_ne!(first.vars()["REDIS_PASSWORD"], second.vars()["REDIS_PASSWORD"]);
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_leaves_no_process_listener_or_directory() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up(&parent).await;
    let (pid, ports, dir) = footprint(&sandbox);

    sandbox.shutdown().await.unwrap();
    assert_nothing_left(pid, ports, &dir, &parent);
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_leaves_no_process_listener_or_directory() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up(&parent).await;
    let (pid, ports, dir) = footprint(&sandbox);

    drop(sandbox);
    // The listener closes when the runtime drops the aborted accept task.
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_nothing_left(pid, ports, &dir, &parent);
}

fn footprint(sandbox: &Sandbox) -> (u32, [u16; 2], std::path::PathBuf) {
    let redis = sandbox.redis().unwrap();
    let ports = [sandbox.bastion().unwrap().port(), redis.port()];
    assert!(ports.iter().all(|port| is_listening(*port)));
    (redis.pid().unwrap(), ports, sandbox.dir().to_path_buf())
}

fn assert_nothing_left(
    pid: u32,
    ports: [u16; 2],
    dir: &std::path::Path,
    parent: &tempfile::TempDir,
) {
    assert!(!process_exists(pid), "redis-server {pid} still runs");
    for port in ports {
        assert!(!is_listening(port), "127.0.0.1:{port} still accepts connections");
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_of_a_sandbox_whose_owner_died_is_removed_by_the_next_one() {
    let parent = tempfile::tempdir().unwrap();
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead = parent.path().join("mesh-sandbox-dead");
    let live = parent.path().join("mesh-sandbox-live");
    let foreign = parent.path().join("mesh-sandbox-no-owner");
    for dir in [&dead, &live, &foreign] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("sandbox.env"), "REDIS_PASSWORD=x\n").unwrap();
    }
    std::fs::write(dead.join("owner.pid"), format!("{}\n", exited.id())).unwrap();
    std::fs::write(live.join("owner.pid"), format!("{}\n", std::process::id())).unwrap();

    let sandbox = up(&parent).await;
    let owner = std::fs::read_to_string(sandbox.dir().join("owner.pid")).unwrap();
    assert_eq!(owner.trim(), std::process::id().to_string());
    assert!(!dead.exists(), "the dead owner's directory is still there");
    assert!(live.exists(), "a live owner's directory was removed");
    assert!(foreign.exists(), "a directory without an owner file was removed");
    sandbox.shutdown().await.unwrap();
}
