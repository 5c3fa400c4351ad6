//! Refusals the user must act on, against real sshd: ports, host keys in every known_hosts
//! form, key files and their passphrases, RSA signatures and `~/.ssh/config` aliases.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{forward_to, init_tracing, spec};
use mesh_config::Secret;
use mesh_testkit::{free_port, generate_key, require, KeyType, RedisServer, Sshd};
use mesh_tunnel::{TunnelError, TunnelSpec};

async fn start(spec: TunnelSpec) -> Result<mesh_tunnel::Tunnel, TunnelError> {
    mesh_tunnel::bind(spec).await?.start().await
}

/// sshd with only the given host key types, and a redis-server to forward to.
fn servers(host_keys: &[KeyType]) -> (Sshd, RedisServer) {
    init_tracing();
    (Sshd::builder().host_key_types(host_keys).start(), RedisServer::builder().start())
}

fn write_known_hosts(dir: &Path, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join("known_hosts");
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn fingerprint(public_line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.pub");
    fs::write(&file, public_line).unwrap();
    let out = Command::new(require("ssh-keygen")).arg("-lf").arg(&file).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).expect("ssh-keygen -l prints a fingerprint").to_string()
}

#[tokio::test]
async fn taken_port_fails_at_once_naming_the_port_and_its_holder() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut spec = TunnelSpec::new("192.0.2.1", vec![forward_to(6379)]);
    spec.forwards[0].local_port = port;
    spec.ssh_config = None;

    let started = std::time::Instant::now();
    let err = mesh_tunnel::bind(spec).await.err().expect("bind fails");
    assert!(started.elapsed().as_millis() < 500, "no network wait before the port check");
    let TunnelError::PortInUse { port: reported, holder: who, .. } = &err else {
        panic!("expected PortInUse, got {err:?}");
    };
    assert_eq!(*reported, port);
    let pid = std::process::id();
    assert!(who.as_deref().is_some_and(|h| h.ends_with(&format!("(pid {pid})"))), "{who:?}");
    assert!(err.to_string().starts_with(&format!("local port {port} on 127.0.0.1:{port} is")));
}

#[tokio::test]
async fn unknown_host_key_is_refused_then_accept_new_records_it() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("fresh/.ssh/known_hosts");
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = known_hosts.clone();

    let err = start(spec.clone()).await.err().expect("an unknown host is refused");
    let expected = fingerprint(&sshd.host_keys()[0].public_line);
    let TunnelError::UnknownHostKey { fingerprint, .. } = &err else { panic!("{err:?}") };
    assert!(fingerprint.ends_with(&expected), "{fingerprint} vs {expected}");
    let message = err.to_string();
    assert!(message.contains("--accept-new") && message.contains(&expected), "{message}");
    assert!(!known_hosts.exists(), "nothing is recorded without --accept-new");

    spec.accept_new = true;
    start(spec.clone()).await.expect("accept_new trusts on first use").shutdown().await;
    let recorded = fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(recorded.trim(), sshd.known_hosts_line(&sshd.host_keys()[0].public_line));
    assert_eq!(fs::metadata(&known_hosts).unwrap().permissions().mode() & 0o777, 0o600);
    let parent = fs::metadata(known_hosts.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o777, 0o700);

    spec.accept_new = false;
    start(spec).await.expect("the recorded key is trusted").shutdown().await;
}

#[tokio::test]
async fn changed_host_key_is_refused_with_both_fingerprints_and_the_remove_command() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let dir = tempfile::tempdir().unwrap();
    let old = generate_key(dir.path(), KeyType::Ed25519, None);
    let known_hosts = write_known_hosts(dir.path(), &[sshd.known_hosts_line(&old.public_line)]);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = known_hosts.clone();
    spec.accept_new = true; // never a licence to replace a known key

    let err = start(spec).await.err().expect("a changed key is refused");
    assert!(matches!(err, TunnelError::HostKeyMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&fingerprint(&old.public_line)), "{message}");
    assert!(message.contains(&fingerprint(&sshd.host_keys()[0].public_line)), "{message}");
    let remove =
        format!("ssh-keygen -R '[127.0.0.1]:{}' -f {}", sshd.port(), known_hosts.display());
    assert!(message.contains(&remove), "{message}");
}

#[tokio::test]
async fn revoked_host_key_is_refused_even_when_also_trusted() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let dir = tempfile::tempdir().unwrap();
    let line = sshd.known_hosts_line(&sshd.host_keys()[0].public_line);
    let revoked = format!("@revoked * {}", line.split_once(' ').unwrap().1);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = write_known_hosts(dir.path(), &[line, revoked]);

    let err = start(spec).await.err().expect("a revoked key is refused");
    assert!(matches!(err, TunnelError::HostKeyRevoked { .. }), "{err:?}");
    assert!(err.to_string().contains("@revoked"));
}

#[tokio::test]
async fn cert_authority_line_is_not_trust_in_the_host_key() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let dir = tempfile::tempdir().unwrap();
    let line = sshd.known_hosts_line(&sshd.host_keys()[0].public_line);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = write_known_hosts(dir.path(), &[format!("@cert-authority {line}")]);

    let err = start(spec).await.err().expect("a CA line does not vouch for a plain key");
    assert!(matches!(err, TunnelError::UnknownHostKey { .. }), "{err:?}");
}

#[tokio::test]
async fn hashed_known_hosts_with_only_an_rsa_key_connects() {
    // Trap 15: the server also has ed25519 and ECDSA keys; only RSA is recorded.
    let (sshd, redis) = servers(&KeyType::ALL);
    let dir = tempfile::tempdir().unwrap();
    let rsa = sshd.host_keys().iter().find(|k| k.kind == KeyType::Rsa).unwrap();
    let known_hosts = write_known_hosts(
        dir.path(),
        &["# hashed by ssh-keygen -H below".into(), sshd.known_hosts_line(&rsa.public_line)],
    );
    let hashed = Command::new(require("ssh-keygen")).arg("-H").arg("-f").arg(&known_hosts).output();
    assert!(hashed.unwrap().status.success());
    let text = fs::read_to_string(&known_hosts).unwrap();
    assert!(text.contains("|1|") && !text.contains("127.0.0.1"), "not hashed: {text}");

    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = known_hosts;
    start(spec).await.expect("the recorded RSA key is negotiated").shutdown().await;
}

#[tokio::test]
async fn known_hosts_with_only_an_ecdsa_key_among_other_hosts_connects() {
    let (sshd, redis) = servers(&KeyType::ALL);
    let dir = tempfile::tempdir().unwrap();
    let other = generate_key(dir.path(), KeyType::Ed25519, None);
    let ecdsa = sshd.host_keys().iter().find(|k| k.kind == KeyType::Ecdsa).unwrap();
    let ecdsa_line = sshd.known_hosts_line(&ecdsa.public_line);
    let lines = [
        format!("elsewhere,10.9.9.9 {} comment", other.public_line),
        format!(
            "{},[localhost]:{} {} laptop",
            ecdsa_line.split(' ').next().unwrap(),
            sshd.port(),
            ecdsa_line.split_once(' ').unwrap().1
        ),
    ];
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.known_hosts = write_known_hosts(dir.path(), &lines);
    start(spec).await.expect("the recorded ECDSA key is negotiated").shutdown().await;
}

#[tokio::test]
async fn world_readable_key_is_refused_with_the_chmod_fix() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let key = sshd.user_key().private_path.clone();
    let copy = sshd.dir().join("loose_key");
    fs::copy(&key, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = Some(copy.clone());

    let err = start(spec).await.err().expect("a 0644 key is refused");
    assert!(matches!(err, TunnelError::KeyPermissions { mode: 0o644, .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("chmod 600 {}", copy.display())));
}

#[tokio::test]
async fn encrypted_key_needs_its_passphrase_and_works_with_it() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let key = generate_key(sshd.dir(), KeyType::Ed25519, Some("correct horse"));
    sshd.authorize(&key.public_line);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = Some(key.private_path.clone());

    let err = start(spec.clone()).await.err().expect("no passphrase, no terminal");
    assert!(matches!(err, TunnelError::KeyNeedsPassphrase { .. }), "{err:?}");
    assert!(err.to_string().contains("BASTION_KEY_PASSPHRASE"));

    spec.passphrase = Some(Secret::new("wrong"));
    let err = start(spec.clone()).await.err().expect("a wrong passphrase");
    assert!(matches!(err, TunnelError::WrongPassphrase { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong\""), "{err}");

    spec.passphrase = Some(Secret::new("correct horse"));
    start(spec).await.expect("the passphrase opens the key").shutdown().await;
}

#[tokio::test]
async fn rsa_key_signs_with_sha2_for_a_server_refusing_ssh_rsa() {
    init_tracing();
    let sshd = Sshd::builder()
        .host_key_types(&[KeyType::Ed25519])
        .user_key(KeyType::Rsa)
        .extra_config("PubkeyAcceptedAlgorithms -ssh-rsa")
        .start();
    let redis = RedisServer::builder().start();
    let spec = spec(&sshd, vec![forward_to(redis.port())]);
    start(spec).await.expect("rsa-sha2 signature accepted").shutdown().await;
    assert!(sshd.log().contains("Accepted publickey"), "sshd did not log the login");
}

#[tokio::test]
async fn unauthorized_key_is_rejected_naming_what_was_tried() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let stranger = generate_key(sshd.dir(), KeyType::Ecdsa, None);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = Some(stranger.private_path.clone());

    let err = start(spec).await.err().expect("an unauthorized key is rejected");
    let TunnelError::AuthRejected { tried, .. } = &err else { panic!("{err:?}") };
    assert!(tried[0].starts_with(&stranger.private_path.display().to_string()), "{tried:?}");
    assert!(err.to_string().contains("authorized_keys"));
}

#[tokio::test]
async fn legacy_key_format_names_the_ssh_keygen_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_dsa");
    fs::write(
        &key,
        "-----BEGIN DSA PRIVATE KEY-----\nMIIBuwIBAAKBgQ==\n-----END DSA PRIVATE KEY-----\n",
    )
    .unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let mut spec = TunnelSpec::new("127.0.0.1", vec![forward_to(6379)]);
    spec.port = free_port();
    spec.key_file = Some(key.clone());
    spec.ssh_config = None;

    let err = start(spec).await.err().expect("an unsupported format fails before connecting");
    assert!(matches!(err, TunnelError::UnsupportedKeyFormat { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("ssh-keygen -p -f {}", key.display())));
}

#[tokio::test]
async fn ssh_config_alias_gives_host_port_user_and_identity_file() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let config = sshd.dir().join("ssh_config");
    fs::write(
        &config,
        format!(
            "Host bastion-alias\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n",
            sshd.port(),
            sshd.user(),
            sshd.user_key().private_path.display()
        ),
    )
    .unwrap();
    let mut spec = TunnelSpec::new("bastion-alias", vec![forward_to(redis.port())]);
    spec.ssh_config = Some(config);
    spec.known_hosts = sshd.known_hosts().to_path_buf();
    spec.interactive = false;
    let tunnel = start(spec).await.expect("the alias resolves");
    assert_eq!(tunnel.status().bastion, format!("{}@127.0.0.1:{}", sshd.user(), sshd.port()));
    tunnel.shutdown().await;
}

#[tokio::test]
async fn unreachable_bastion_is_named_apart_from_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = generate_key(dir.path(), KeyType::Ed25519, None);
    let mut spec = TunnelSpec::new("127.0.0.1", vec![forward_to(6379)]);
    spec.port = free_port();
    spec.ssh_config = None;
    spec.key_file = Some(key.private_path);
    let err = start(spec.clone()).await.err().expect("nothing listens there");
    assert!(matches!(err, TunnelError::HostUnreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("cannot reach the bastion 127.0.0.1:{}", spec.port)));
}

/// A private ssh-agent holding `keys`, stopped on drop.
struct Agent {
    _process: mesh_testkit::process::Running,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn agent_with(keys: &[&Path]) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut command = Command::new(require("ssh-agent"));
    command.arg("-D").arg("-a").arg(&socket).stdout(std::process::Stdio::null());
    let process = mesh_testkit::process::Running::spawn(command).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "ssh-agent did not create its socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for key in keys {
        let added = Command::new(require("ssh-add"))
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(added.status.success(), "ssh-add: {}", String::from_utf8_lossy(&added.stderr));
    }
    Agent { _process: process, socket, _dir: dir }
}

#[tokio::test]
async fn agent_key_authenticates_when_no_key_file_is_set() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let agent = agent_with(&[&sshd.user_key().private_path]);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = None;
    spec.agent = Some(agent.socket.clone());
    start(spec).await.expect("the agent's key is accepted").shutdown().await;
}

#[tokio::test]
async fn many_agent_keys_are_capped_below_max_auth_tries() {
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let dir = tempfile::tempdir().unwrap();
    let strangers: Vec<_> =
        (0..7).map(|_| generate_key(dir.path(), KeyType::Ed25519, None).private_path).collect();
    let paths: Vec<&Path> = strangers.iter().map(|p| p.as_path()).collect();
    let agent = agent_with(&paths);
    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = None;
    spec.agent = Some(agent.socket.clone());

    let err = start(spec).await.err().expect("no agent key is authorized");
    let TunnelError::AuthRejected { tried, .. } = &err else { panic!("{err:?}") };
    assert_eq!(tried.len(), 5, "{tried:?}");
    assert!(!sshd.log().contains("Too many authentication failures"), "sshd locked us out");
}

#[tokio::test]
async fn legacy_pem_keys_are_read_plain_and_encrypted() {
    use mesh_testkit::{generate_key_in_format, KeyFormat};
    let (sshd, redis) = servers(&[KeyType::Ed25519]);
    let ecdsa = generate_key_in_format(sshd.dir(), KeyType::Ecdsa, None, KeyFormat::Pem);
    let rsa = generate_key_in_format(sshd.dir(), KeyType::Rsa, Some("pem pass"), KeyFormat::Pem);
    for key in [&ecdsa, &rsa] {
        let text = fs::read_to_string(&key.private_path).unwrap();
        assert!(text.starts_with("-----BEGIN") && !text.contains("OPENSSH"), "{text}");
        sshd.authorize(&key.public_line);
    }

    let mut spec = spec(&sshd, vec![forward_to(redis.port())]);
    spec.key_file = Some(ecdsa.private_path.clone());
    start(spec.clone()).await.expect("a PEM ECDSA key works").shutdown().await;

    spec.key_file = Some(rsa.private_path.clone());
    let err = start(spec.clone()).await.err().expect("an encrypted PEM key needs its passphrase");
    assert!(matches!(err, TunnelError::KeyNeedsPassphrase { .. }), "{err:?}");
    spec.passphrase = Some(Secret::new("pem pass"));
    start(spec).await.expect("an encrypted PEM RSA key works").shutdown().await;
}
