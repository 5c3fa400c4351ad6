//! A TLS sandbox: its Redis speaks TLS only, with a certificate for the
//! endpoint's name and none for 127.0.0.1, reachable through the bastion, and
//! nothing is left once it stops.

mod common;

use common::{auth_ping, is_listening, process_exists, SshForward};
use mesh_sandbox::{Sandbox, SandboxOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

async fn up_tls(parent: &tempfile::TempDir) -> Sandbox {
    common::require_binary("redis-server", "apt-get install -y redis-server redis-tools");
    common::require_binary("openssl", "apt-get install -y openssl");
    let options = SandboxOptions {
        parent_dir: Some(parent.path().to_path_buf()),
        tls: true,
        ..Default::default()
    };
    Sandbox::up(options).await.unwrap()
}

/// `redis-cli --tls` PING on 127.0.0.1:`port`, trusting only `ca`, with `sni`
/// as the server name; its stdout and stderr together.
fn redis_cli_tls(port: u16, password: &str, ca: &Path, sni: &str) -> String {
    common::require_binary("redis-cli", "apt-get install -y redis-tools");
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["--sni", sni, "-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .env("REDISCLI_AUTH", password)
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A PING through our probe, verifying the certificate as `name`.
fn verified_ping(sandbox: &Sandbox, port: u16, name: &str) -> Result<(), String> {
    let redis = sandbox.redis().unwrap();
    let ca_cert = sandbox.ca_cert().map(Path::to_path_buf);
    let target = mesh_probe::Target::new(name, 6379)
        .via(([127, 0, 0, 1], port).into())
        .password(redis.password().clone())
        .tls(mesh_probe::TlsMode::Verify { ca_cert });
    std::thread::scope(|scope| {
        scope
            .spawn(|| mesh_probe::blocking(mesh_probe::ping(&target, &mesh_probe::NoTunnel)))
            .join()
            .unwrap()
    })
    .map(drop)
    .map_err(|err| err.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_redis_answers_as_the_endpoint_name_and_refuses_plain_text() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up_tls(&parent).await;
    let vars = sandbox.vars();
    let redis = sandbox.redis().unwrap();
    let tls = redis.tls().unwrap();
    let endpoint = sandbox.endpoint();

    assert_eq!(vars["REDIS_TLS_ENABLED"], "true");
    assert_eq!(vars["REDIS_CA_CERT"], tls.ca_cert.display().to_string());
    assert_eq!(tls.server_name, endpoint);
    assert!(tls.ca_cert.starts_with(sandbox.dir()) && tls.key.starts_with(sandbox.dir()));
    let mode = std::fs::metadata(&tls.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // redis-cli, trusting only the throwaway CA, with the endpoint as SNI.
    let password = redis.password().expose();
    let reply = redis_cli_tls(redis.port(), password, &tls.ca_cert, endpoint);
    assert_eq!(reply.trim(), "PONG");

    // Our probe checks the name too: the endpoint's passes, 127.0.0.1 does not.
    verified_ping(&sandbox, redis.port(), endpoint).unwrap();
    let err = verified_ping(&sandbox, redis.port(), "127.0.0.1").unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // Plain text gets no answer.
    let plain = auth_ping(redis.port(), redis.password()).unwrap_or_default();
    assert!(!plain.contains("PONG"), "a plain-text PING was answered: {plain:?}");

    // The password is in the private config, never in argv.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", redis.pid().unwrap())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(password));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_redis_is_reached_through_the_bastion_under_the_endpoint_name() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up_tls(&parent).await;
    let bastion = sandbox.bastion().unwrap();
    let target = format!("{}:6379", sandbox.endpoint());
    let forward = SshForward::start(
        bastion.port(),
        bastion.user_key_path(),
        bastion.known_hosts_path(),
        &target,
    );

    verified_ping(&sandbox, forward.local_port, sandbox.endpoint()).unwrap();
    drop(forward);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_sandbox_leaves_no_process_listener_or_file() {
    let parent = tempfile::tempdir().unwrap();
    let sandbox = up_tls(&parent).await;
    let redis = sandbox.redis().unwrap();
    let (pid, port) = (redis.pid().unwrap(), redis.port());
    let bastion_port = sandbox.bastion().unwrap().port();
    let dir = sandbox.dir().to_path_buf();
    assert!(is_listening(port) && is_listening(bastion_port));

    sandbox.shutdown().await.unwrap();
    assert!(!process_exists(pid), "redis-server {pid} still runs");
    assert!(!is_listening(port) && !is_listening(bastion_port));
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
}
