//! The sandbox bastion against russh's client and OpenSSH's `ssh`: who gets in,
//! where forwards may go, and bytes, EOF and close passed through to Redis.

mod common;

use common::{auth_ping, openssh_options, require_binary, wait_for, SshForward};
use mesh_sandbox::{Bastion, BastionConfig, LocalRedis};
use russh::client::{self, AuthResult};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelOpenFailure, MethodKind};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const ENDPOINT: &str = "sandbox-test01.serverless.use1.cache.amazonaws.com";

/// A configured target with nothing listening behind it.
const DEAD_ENDPOINT: &str = "sandbox-dead01.serverless.use1.cache.amazonaws.com";

/// A bastion in front of a real redis-server, in one temp dir.
struct Setup {
    bastion: Bastion,
    redis: LocalRedis,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    require_binary("redis-server", "apt-get install -y redis-server redis-tools");
    let dir = tempfile::tempdir().unwrap();
    let redis = LocalRedis::start(dir.path()).unwrap();
    let redis_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, redis.port()));
    let nothing =
        SocketAddr::from((Ipv4Addr::LOCALHOST, mesh_sandbox::free_loopback_port().unwrap()));
    let targets = BTreeMap::from([
        (format!("{ENDPOINT}:6379"), redis_addr),
        (format!("{DEAD_ENDPOINT}:6379"), nothing),
    ]);
    let bastion =
        Bastion::start(BastionConfig { dir: dir.path().to_path_buf(), targets }).await.unwrap();
    Setup { bastion, redis, _dir: dir }
}

/// A russh client that accepts only the host key recorded in `known_hosts`.
struct PinnedHostKey {
    expected: PublicKey,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.expected.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

fn recorded_host_key(setup: &Setup) -> PublicKey {
    let line = std::fs::read_to_string(setup.bastion.known_hosts_path()).unwrap();
    let (host, key) = line.trim().split_once(' ').unwrap();
    assert_eq!(host, format!("[127.0.0.1]:{}", setup.bastion.port()));
    PublicKey::from_openssh(key).unwrap()
}

async fn connect(setup: &Setup) -> client::Handle<PinnedHostKey> {
    let config = Arc::new(client::Config::default());
    let handler = PinnedHostKey { expected: recorded_host_key(setup) };
    client::connect(config, (Ipv4Addr::LOCALHOST, setup.bastion.port()), handler).await.unwrap()
}

async fn login(setup: &Setup) -> client::Handle<PinnedHostKey> {
    let mut session = connect(setup).await;
    let key = PrivateKey::read_openssh_file(setup.bastion.user_key_path()).unwrap();
    let auth = session
        .authenticate_publickey("ec2-user", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .unwrap();
    assert!(matches!(auth, AuthResult::Success), "{auth:?}");
    session
}

fn open_failure(result: Result<russh::Channel<client::Msg>, russh::Error>) -> ChannelOpenFailure {
    match result {
        Err(russh::Error::ChannelOpenFailure(failure)) => failure,
        Err(other) => panic!("expected a channel open failure, got {other:?}"),
        Ok(_) => panic!("the bastion opened a channel it should have refused"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_the_endpoint_name_to_redis_and_passes_eof_back() {
    let setup = setup().await;
    let session = login(&setup).await;

    let mut channel =
        session.channel_open_direct_tcpip(ENDPOINT, 6379, "127.0.0.1", 40000).await.unwrap();
    let pw = setup.redis.password().expose();
    let request = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n*1\r\n$4\r\nPING\r\n", pw.len());
    channel.data_bytes(request.into_bytes()).await.unwrap();
    channel.eof().await.unwrap();

    // Redis answers, then closes on our EOF; both must come back to us.
    let mut reply = Vec::new();
    let (mut saw_eof, mut saw_close) = (false, false);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => reply.extend_from_slice(&data),
                ChannelMsg::Eof => saw_eof = true,
                ChannelMsg::Close => {
                    saw_close = true;
                    break;
                }
                _ => {}
            }
        }
    });
    read.await.expect("the channel ends after redis closes");
    assert_eq!(String::from_utf8_lossy(&reply), "+OK\r\n+PONG\r\n");
    assert!(saw_eof, "EOF from redis was not passed through");
    assert!(saw_close, "the bastion did not close the channel");
    setup.bastion.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_target_outside_its_configuration() {
    let setup = setup().await;
    let session = login(&setup).await;

    for (host, port) in [
        ("prod-cache.serverless.use1.cache.amazonaws.com", 6379),
        (ENDPOINT, 6380),
        ("127.0.0.1", u32::from(setup.redis.port())),
    ] {
        let opened = session.channel_open_direct_tcpip(host, port, "127.0.0.1", 40000).await;
        assert!(
            matches!(open_failure(opened), ChannelOpenFailure::AdministrativelyProhibited),
            "{host}:{port}"
        );
    }

    // The refusals do not hurt the session: the configured target still works.
    session.channel_open_direct_tcpip(ENDPOINT, 6379, "127.0.0.1", 40000).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_target_that_is_down_fails_as_connect_failed() {
    let setup = setup().await;
    let session = login(&setup).await;

    let opened = session.channel_open_direct_tcpip(DEAD_ENDPOINT, 6379, "127.0.0.1", 40000).await;
    assert!(matches!(open_failure(opened), ChannelOpenFailure::ConnectFailed));
    session.channel_open_direct_tcpip(ENDPOINT, 6379, "127.0.0.1", 40000).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_shell_session() {
    let setup = setup().await;
    let session = login(&setup).await;

    let opened = session.channel_open_session().await;
    assert!(matches!(open_failure(opened), ChannelOpenFailure::AdministrativelyProhibited));
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_an_unknown_user_key() {
    let setup = setup().await;
    let mut session = connect(&setup).await;
    let stranger = stranger_key();

    let auth = session
        .authenticate_publickey("ec2-user", PrivateKeyWithHashAlg::new(Arc::new(stranger), None))
        .await
        .unwrap();
    match auth {
        AuthResult::Failure { remaining_methods, .. } => {
            assert_eq!(remaining_methods.to_vec(), [MethodKind::PublicKey]);
        }
        AuthResult::Success => panic!("the bastion accepted a key it never issued"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_password_login() {
    let setup = setup().await;
    let mut session = connect(&setup).await;

    let auth = session.authenticate_password("ec2-user", "hunter2").await.unwrap();
    match auth {
        AuthResult::Failure { remaining_methods, .. } => {
            assert_eq!(remaining_methods.to_vec(), [MethodKind::PublicKey]);
        }
        AuthResult::Success => panic!("the bastion accepted a password"),
    }
    let none = session.authenticate_none("ec2-user").await.unwrap();
    assert!(!none.success(), "the bastion let a client in without credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_forwards_through_the_bastion_to_redis() {
    let setup = setup().await;
    let bastion = &setup.bastion;
    let mut forward = SshForward::start(
        bastion.port(),
        bastion.user_key_path(),
        bastion.known_hosts_path(),
        &format!("{ENDPOINT}:6379"),
    );

    let reply = auth_ping(forward.local_port, setup.redis.password()).unwrap();
    assert_eq!(reply, "+OK\r\n+PONG\r\n");
    // A second connection on the same session works too.
    let reply = auth_ping(forward.local_port, setup.redis.password()).unwrap();
    assert_eq!(reply, "+OK\r\n+PONG\r\n");
    forward.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_sees_a_refused_target_as_administratively_prohibited() {
    let setup = setup().await;
    let bastion = &setup.bastion;
    let mut forward = SshForward::start(
        bastion.port(),
        bastion.user_key_path(),
        bastion.known_hosts_path(),
        "prod-cache.serverless.use1.cache.amazonaws.com:6379",
    );

    // The local connection is closed without a byte; ssh says why on stderr.
    let mut stream =
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, forward.local_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    assert!(buf.is_empty());
    forward.stop();
    let mut stderr = String::new();
    forward.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("administratively prohibited"), "ssh said: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_password_login_is_refused() {
    let setup = setup().await;
    let bastion = &setup.bastion;
    let ssh = require_binary("ssh", "apt-get install -y openssh-client");
    let mut options =
        openssh_options(bastion.port(), bastion.user_key_path(), bastion.known_hosts_path());
    options.extend(["-o".into(), "PreferredAuthentications=password,keyboard-interactive".into()]);

    let output = Command::new(ssh)
        .args(options)
        .args(["-N", "ec2-user@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "ssh said: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_login_with_an_unknown_key_is_refused() {
    let setup = setup().await;
    let bastion = &setup.bastion;
    let ssh = require_binary("ssh", "apt-get install -y openssh-client");
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("stranger");
    let pem = stranger_key().to_openssh(russh::keys::ssh_key::LineEnding::LF).unwrap();
    std::fs::write(&key_path, pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();

    let output = Command::new(ssh)
        .args(openssh_options(bastion.port(), &key_path, bastion.known_hosts_path()))
        .args(["-N", "ec2-user@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "ssh said: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openssh_refuses_a_bastion_with_another_host_key() {
    let setup = setup().await;
    let bastion = &setup.bastion;
    let ssh = require_binary("ssh", "apt-get install -y openssh-client");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("known_hosts");
    let stranger = stranger_key();
    let line =
        format!("[127.0.0.1]:{} {}\n", bastion.port(), stranger.public_key().to_openssh().unwrap());
    std::fs::write(&wrong, line).unwrap();

    let output = Command::new(ssh)
        .args(openssh_options(bastion.port(), bastion.user_key_path(), &wrong))
        .args(["-N", "ec2-user@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "ssh said: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_the_port_and_ends_open_sessions() {
    let setup = setup().await;
    let port = setup.bastion.port();
    let session = login(&setup).await;
    assert!(common::is_listening(port));

    setup.bastion.shutdown().await;
    assert!(!common::is_listening(port), "the bastion port is still open after shutdown");
    wait_for("the client session to end", Duration::from_secs(5), || {
        session.is_closed().then_some(())
    });
}

/// An ed25519 key the bastion never issued (a fixed seed: it only has to differ).
fn stranger_key() -> PrivateKey {
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    let keypair = Ed25519Keypair::from_seed(&[7u8; 32]);
    PrivateKey::new(KeypairData::from(keypair), "stranger").unwrap()
}
