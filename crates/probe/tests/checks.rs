//! Every check outcome against a real redis-server (or a real sshd, or a socket that behaves
//! like a failing tunnel), asserted by the exact message a user reads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use mesh_config::Secret;
use mesh_probe::{
    blocking, info, ping, KnownChannelError, NoTunnel, ProbeError, Target, TlsMode, TlsState,
};
use mesh_testkit::{free_port, loopback, RedisServer, Sshd};

/// The name the test certificates are issued for; it does not resolve, so reaching it at all
/// proves we dial loopback while verifying this name.
const ENDPOINT: &str = "cache.mesh.test";

fn direct(server: &RedisServer) -> Target {
    Target::new("127.0.0.1", server.port())
}

/// The endpoint as configured, reached through a "forward" that is the server's own port.
fn through_forward(server: &RedisServer) -> Target {
    Target::new(ENDPOINT, 6379).via(server.addr())
}

fn check(target: &Target) -> Result<mesh_probe::PingReport, ProbeError> {
    blocking(ping(target, &NoTunnel))
}

fn failure(target: &Target) -> ProbeError {
    match check(target) {
        Ok(report) => panic!("expected a failure, got {report:?}"),
        Err(err) => err,
    }
}

#[test]
fn pings_a_plain_server_with_a_password() {
    let server = RedisServer::builder().password("s3cret").start();
    let report = check(&direct(&server).password(Secret::new("s3cret"))).unwrap();
    assert_eq!(report.tls, TlsState::Off);
    assert_eq!(report.via, "direct");
    assert!(report.rtt_ms > 0.0 && report.rtt_ms < 1000.0, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn pings_as_an_acl_user_through_a_forward() {
    let server = RedisServer::builder().password("admin").acl_user("app", "app-pw").start();
    let target = Target::new("127.0.0.1", server.port()).via(server.addr());
    let report = check(&target.user("app").password(Secret::new("app-pw"))).unwrap();
    assert_eq!(report.user.as_deref(), Some("app"));
    assert_eq!(report.via, server.addr().to_string());
}

#[test]
fn verifies_tls_as_the_endpoint_name_while_dialling_loopback() {
    let server = RedisServer::builder().tls(ENDPOINT).password("s3cret").start();
    let ca_cert = Some(server.tls().unwrap().ca_cert.clone());
    let target =
        through_forward(&server).tls(TlsMode::Verify { ca_cert }).password(Secret::new("s3cret"));
    let report = check(&target).unwrap();
    assert_eq!(report.tls, TlsState::Verified);
    assert_eq!(report.endpoint, "cache.mesh.test:6379");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn refused_forward_says_start_the_tunnel_or_go_direct() {
    let target = Target::new(ENDPOINT, 6379).via(loopback(free_port()));
    let err = failure(&target);
    assert_eq!(err.class(), "refused");
    let port = match &target.route {
        mesh_probe::Route::Forward(addr) => addr.port(),
        _ => unreachable!(),
    };
    assert_eq!(
        err.to_string(),
        format!(
            "nothing listens on the forward 127.0.0.1:{port} (for cache.mesh.test:6379): no \
             tunnel is running; start it with `cargo xtask tunnel start`, or pass --direct to \
             dial the endpoint itself"
        )
    );
}

#[test]
fn refused_direct_connection_names_the_endpoint() {
    let port = free_port();
    let err = failure(&Target::new("127.0.0.1", port));
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{port} refused the connection: check ELASTICACHE_ENDPOINT and its port, \
             and that Redis is running there"
        )
    );
}

/// A listener that accepts and then does `behaviour` with each connection, on a thread.
fn fake_server(behaviour: fn(std::net::TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || behaviour(stream));
        }
    });
    addr
}

#[test]
fn a_server_that_never_answers_times_out_waiting_for_a_reply() {
    let addr = fake_server(|stream| {
        thread::sleep(Duration::from_secs(5));
        drop(stream);
    });
    let target = Target::new(ENDPOINT, 6379).via(addr).timeout(Duration::from_millis(300));
    let err = failure(&target);
    assert_eq!(err.class(), "timeout");
    assert_eq!(
        err.to_string(),
        format!(
            "cache.mesh.test:6379 through the forward {addr} did not answer: waited 300 ms for a \
             reply; check that the endpoint is up and that its security group lets the bastion \
             in (or raise --timeout)"
        )
    );
}

#[test]
fn a_tunnel_closing_at_once_is_named_with_its_channel_error() {
    // What a tunnel does when the bastion cannot open a channel to the endpoint.
    let addr = fake_server(drop);
    let target = Target::new(ENDPOINT, 6379).via(addr);
    let reason = "channel open to cache.mesh.test:6379 failed: Connection refused (bastion)";
    let tunnel = KnownChannelError(Some(reason.to_string()));
    let err = blocking(ping(&target, &tunnel)).unwrap_err();
    assert_eq!(err.class(), "bastion-unreachable");
    assert_eq!(
        err.to_string(),
        "the bastion cannot reach cache.mesh.test:6379: the tunnel closed the connection at once \
         and reports `channel open to cache.mesh.test:6379 failed: Connection refused \
         (bastion)`; check ELASTICACHE_ENDPOINT and that the endpoint's security group admits \
         the bastion"
    );
}

#[test]
fn a_close_at_once_without_a_tunnel_reason_says_so() {
    let addr = fake_server(drop);
    let err = failure(&Target::new(ENDPOINT, 6379).via(addr));
    assert_eq!(err.class(), "closed");
    assert_eq!(
        err.to_string(),
        format!(
            "cache.mesh.test:6379 through the forward {addr} closed the connection before \
             answering: through the tunnel this usually means the bastion cannot reach the \
             endpoint (see `cargo xtask tunnel status`); direct, that Redis drops this client"
        )
    );
}

#[test]
fn plain_text_to_a_tls_only_server_says_tls_required() {
    let server = RedisServer::builder().tls(ENDPOINT).start();
    let err = failure(&through_forward(&server));
    assert_eq!(err.class(), "tls-required");
    assert_eq!(
        err.to_string(),
        format!(
            "cache.mesh.test:6379 through the forward {} only speaks TLS (it dropped our \
             plain-text command and answered a TLS handshake): set REDIS_TLS_ENABLED=true",
            server.addr()
        )
    );
}

#[test]
fn tls_to_a_plain_server_says_tls_not_spoken() {
    let server = RedisServer::builder().start();
    let target = through_forward(&server)
        .tls(TlsMode::Verify { ca_cert: None })
        .timeout(Duration::from_secs(1));
    let err = failure(&target);
    assert_eq!(err.class(), "tls-not-spoken", "{err}");
    assert!(err.to_string().contains("set REDIS_TLS_ENABLED=false"), "{err}");
}

#[test]
fn a_certificate_for_another_name_lists_the_names_it_holds() {
    let server = RedisServer::builder().tls(ENDPOINT).start();
    let ca_cert = Some(server.tls().unwrap().ca_cert.clone());
    let target =
        Target::new("other.mesh.test", 6379).via(server.addr()).tls(TlsMode::Verify { ca_cert });
    let err = failure(&target);
    assert_eq!(err.class(), "tls-name-mismatch");
    assert_eq!(
        err.to_string(),
        format!(
            "the TLS certificate of other.mesh.test:6379 through the forward {} is not valid for \
             `other.mesh.test`: it names `cache.mesh.test`; set ELASTICACHE_ENDPOINT to one of \
             those names (TLS checks the endpoint's name, never 127.0.0.1)",
            server.addr()
        )
    );
}

#[test]
fn a_certificate_from_an_unknown_authority_asks_for_redis_ca_cert() {
    let server = RedisServer::builder().tls(ENDPOINT).start();
    let other = RedisServer::builder().tls(ENDPOINT).start();
    let wrong_ca = other.tls().unwrap().ca_cert.clone();
    let target = through_forward(&server).tls(TlsMode::Verify { ca_cert: Some(wrong_ca.clone()) });
    let err = failure(&target);
    assert_eq!(err.class(), "tls-unknown-ca");
    assert_eq!(
        err.to_string(),
        format!(
            "the TLS certificate of cache.mesh.test:6379 through the forward {} was issued by an \
             unknown authority (not by {}): set REDIS_CA_CERT to the PEM file of the CA that \
             signed it",
            server.addr(),
            wrong_ca.display()
        )
    );

    // The system store does not know the test CA either.
    let err = failure(&through_forward(&server).tls(TlsMode::Verify { ca_cert: None }));
    assert_eq!(err.class(), "tls-unknown-ca", "{err}");
}

#[test]
fn insecure_tls_connects_to_any_name_and_says_so() {
    let server = RedisServer::builder().tls(ENDPOINT).start();
    let target = Target::new("other.mesh.test", 6379).via(server.addr()).tls(TlsMode::Insecure);
    let report = check(&target).unwrap();
    assert_eq!(report.tls, TlsState::NotVerified);
    assert_eq!(
        report.warnings,
        ["TLS certificate NOT verified (--insecure): anyone between here and \
          other.mesh.test:6379 can read and change this traffic"]
    );
}

#[test]
fn a_missing_password_is_noauth() {
    let server = RedisServer::builder().password("s3cret").start();
    let err = failure(&direct(&server));
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{} requires a password (NOAUTH): set REDIS_PASSWORD (and REDIS_USERNAME \
             for an ACL user)",
            server.port()
        )
    );
}

#[test]
fn a_wrong_password_is_wrongpass_and_never_shown() {
    let server = RedisServer::builder().password("s3cret").start();
    let err = failure(&direct(&server).password(Secret::new("hunter2-wrong")));
    assert_eq!(err.class(), "wrongpass");
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{} rejected the password (WRONGPASS): check REDIS_PASSWORD",
            server.port()
        )
    );
    assert!(!format!("{err:?}").contains("hunter2"));
}

#[test]
fn a_password_with_a_trailing_newline_is_warned_about() {
    let server = RedisServer::builder().acl_user("app", "app-pw").start();
    let target = direct(&server).user("app").password(Secret::new("app-pw\n"));
    let err = failure(&target);
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{} rejected the user and password (WRONGPASS): check REDIS_PASSWORD and \
             REDIS_USERNAME (`app`); the password starts or ends with whitespace, which is \
             probably a pasting mistake",
            server.port()
        )
    );
    assert_eq!(
        target.warnings(),
        ["REDIS_PASSWORD starts or ends with whitespace (a pasted newline?): Redis compares it \
          byte for byte, so it will likely be rejected"]
    );
}

#[test]
fn an_acl_user_without_the_permission_is_noperm() {
    let server = RedisServer::builder()
        .password("admin")
        .extra_config("user limited on >limited-pw ~* -@all")
        .start();
    let err = failure(&direct(&server).user("limited").password(Secret::new("limited-pw")));
    assert_eq!(
        err.to_string(),
        format!(
            "ACL user `limited` may not run `PING` on 127.0.0.1:{} (NOPERM): grant it in the \
             ACL (e.g. `+ping`), or use a user that may",
            server.port()
        )
    );
}

#[test]
fn a_password_for_a_server_without_one_says_unset_it() {
    let server = RedisServer::builder().start();
    let err = failure(&direct(&server).password(Secret::new("s3cret")));
    assert_eq!(err.class(), "password-not-expected", "{err}");
}

#[test]
fn an_ssh_port_is_not_redis() {
    let sshd = Sshd::builder().start();
    let err = failure(&Target::new("127.0.0.1", sshd.port()));
    assert_eq!(err.class(), "not-redis", "{err}");
    let message = err.to_string();
    let expected_start = format!("127.0.0.1:{} is not Redis: it answered `SSH-2.0-", sshd.port());
    assert!(message.starts_with(&expected_start), "{message}");
    assert!(
        message.ends_with(
            "which is not the Redis protocol; check the port (an SSH or HTTP port answers like \
             this)"
        ),
        "{message}"
    );
}

#[test]
fn an_http_port_is_not_redis() {
    let addr = fake_server(|mut stream| {
        let mut request = [0u8; 256];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let err = failure(&Target::new("127.0.0.1", addr.port()));
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{} is not Redis: it answered `HTTP/1.1 400 Bad Request`, which is not the \
             Redis protocol; check the port (an SSH or HTTP port answers like this)",
            addr.port()
        )
    );
}

#[test]
fn info_describes_a_standalone_server() {
    let server = RedisServer::builder().password("s3cret").start();
    server.cli(&["SET", "a", "1"]);
    server.cli(&["SET", "b", "2"]);
    let target = direct(&server).password(Secret::new("s3cret"));
    let report = blocking(info(&target, &NoTunnel)).unwrap();
    assert_eq!(report.mode, "standalone");
    assert_eq!(report.role.as_deref(), Some("master"));
    assert_eq!(report.keys, 2);
    assert_eq!(report.maxmemory_policy.as_deref(), Some("noeviction"));
    assert!(report.version.as_deref().is_some_and(|v| v.contains('.')), "{report:?}");
    assert!(report.connected_clients.is_some_and(|n| n >= 1), "{report:?}");
    assert!(report.cluster.is_none());
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
}

fn cluster_server() -> RedisServer {
    let server = RedisServer::builder()
        .extra_config("cluster-enabled yes\ncluster-config-file nodes.conf")
        // As an ElastiCache node does: announce an address, here loopback.
        .extra_config("cluster-announce-ip 127.0.0.1")
        .start();
    assert_eq!(server.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]), "OK");
    server
}

#[test]
fn info_in_cluster_mode_flags_nodes_the_forward_cannot_reach() {
    let server = cluster_server();
    let report = blocking(info(&through_forward(&server), &NoTunnel)).unwrap();
    assert_eq!(report.mode, "cluster");
    let cluster = report.cluster.expect("a cluster report");
    assert_eq!(cluster.unreachable, 1);
    let node = &cluster.nodes[0];
    assert_eq!((node.host.as_str(), node.port), ("127.0.0.1", server.port()));
    assert_eq!((node.role.as_str(), node.slots.clone()), ("primary", vec!["0-16383".into()]));
    assert!(!node.reachable);
    assert_eq!(node.note, "an in-VPC address the forward does not carry: a redirect here fails");
    assert_eq!(
        report.warnings,
        ["cluster mode: 1 of 1 announced nodes cannot be reached from here; a MOVED redirect \
          to them will fail (remapping them through the tunnel is not built yet)"]
    );
}

#[test]
fn info_in_cluster_mode_direct_connects_to_each_node() {
    let server = cluster_server();
    let report = blocking(info(&direct(&server), &NoTunnel)).unwrap();
    let cluster = report.cluster.expect("a cluster report");
    assert_eq!(cluster.unreachable, 0, "{cluster:?}");
    assert_eq!(cluster.nodes[0].note, "connects directly");
}

#[test]
fn redis_cli_authenticates_through_the_environment() {
    let server = RedisServer::builder().tls(ENDPOINT).password("s3cret").start();
    let ca_cert = Some(server.tls().unwrap().ca_cert.clone());
    let target =
        through_forward(&server).tls(TlsMode::Verify { ca_cert }).password(Secret::new("s3cret"));
    let output = mesh_probe::redis_cli(&mesh_testkit::require("redis-cli"), &target)
        .arg("PING")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "PONG", "{output:?}");
}
