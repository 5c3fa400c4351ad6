//! Smoke tests: the testkit's redis-server and sshd really start and really talk to clients.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mesh_testkit::{generate_key, require, KeyType, RedisServer, Sshd};

/// Sends one RESP command and reads one reply line (enough for simple and error replies).
fn resp(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).expect("send RESP command");
    let mut line = String::new();
    BufReader::new(&*stream).read_line(&mut line).expect("read RESP reply");
    line.trim_end().to_owned()
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis-server");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

fn describe(output: &Output, sshd: &Sshd) -> String {
    format!(
        "status {}\nstderr: {}\nsshd log tail:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        sshd.log().lines().rev().take(15).collect::<Vec<_>>().join("\n")
    )
}

#[test]
fn redis_answers_ping_only_after_auth_with_its_password() {
    let redis = RedisServer::builder().password("correct horse").start();
    let mut stream = connect(redis.port());

    assert!(resp(&mut stream, &["PING"]).starts_with("-NOAUTH"));
    assert!(resp(&mut stream, &["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(resp(&mut stream, &["AUTH", redis.password().unwrap().expose()]), "+OK");
    assert_eq!(resp(&mut stream, &["PING"]), "+PONG");
    assert_eq!(redis.cli(&["PING"]), "PONG");
}

#[test]
fn redis_acl_user_logs_in_and_a_wrong_password_is_refused() {
    let redis = RedisServer::builder().password("admin pass").acl_user("app", "app pass").start();

    assert_eq!(redis.cli_as("app", "app pass", &["ACL", "WHOAMI"]), "app");
    let refused = redis.cli_as("app", "nope", &["PING"]);
    assert!(refused.contains("WRONGPASS"), "expected WRONGPASS, got {refused:?}");
}

#[test]
fn redis_tls_pings_with_the_ca_and_server_name_and_refuses_plain_text() {
    let redis = RedisServer::builder().password("tls pass").tls("cache.test.internal").start();
    let tls = redis.tls().expect("TLS is on");

    assert_eq!(tls.server_name, "cache.test.internal");
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.plain_port(), None);

    // A plain RESP client on the TLS port gets no reply (the server waits for a handshake or
    // drops the connection), as a plain client of ElastiCache Serverless does.
    let mut stream = connect(redis.port());
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    assert!(!line.contains("PONG"), "plain PING on the TLS port answered {line:?}");
}

#[test]
fn redis_tls_certificate_is_valid_for_its_name_only() {
    let redis = RedisServer::builder().tls("cache.test.internal").start();
    let tls = redis.tls().unwrap();
    let verify = |name: &str| {
        run(Command::new(require("openssl"))
            .args(["verify", "-verify_hostname", name, "-CAfile"])
            .arg(&tls.ca_cert)
            .arg(&tls.cert))
    };

    let good = verify("cache.test.internal");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(!verify("127.0.0.1").status.success(), "certificate accepted for 127.0.0.1");
    assert!(
        !verify("other.test.internal").status.success(),
        "certificate accepted for another name"
    );
}

#[test]
fn redis_tls_with_plain_port_too_serves_both() {
    let redis = RedisServer::builder().tls("cache.test.internal").plain_port_too().start();
    let plain = redis.plain_port().expect("plain port asked for");

    assert_ne!(plain, redis.port());
    assert_eq!(resp(&mut connect(plain), &["PING"]), "+PONG");
    assert_eq!(redis.cli(&["PING"]), "PONG");
}

#[test]
fn redis_restart_keeps_its_port() {
    let mut redis = RedisServer::builder().password("p").start();
    let (port, first_pid) = (redis.port(), redis.pid().unwrap());

    redis.stop();
    assert_eq!(redis.pid(), None);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts");
    redis.start();

    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(first_pid));
    assert_eq!(redis.cli(&["PING"]), "PONG");
}

#[test]
fn redis_is_killed_and_its_dir_removed_on_drop_even_when_the_test_panics() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let redis = RedisServer::builder().start();
        seen = Some((redis.pid().unwrap(), redis.dir().to_path_buf()));
        panic!("test failure while redis runs");
    }));

    assert!(result.is_err());
    let (pid, dir) = seen.expect("redis started");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "redis-server {pid} survived");
    assert!(!dir.exists(), "{dir:?} survived");
}

#[test]
fn sshd_accepts_a_handshake_with_the_generated_keys() {
    let sshd = Sshd::builder().start();

    let output = run(sshd.ssh_command().arg("true"));

    assert!(output.status.success(), "ssh failed: {}", describe(&output, &sshd));
}

#[test]
fn sshd_host_is_refused_with_a_wrong_known_hosts() {
    let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    let other = generate_key(sshd.dir(), KeyType::Ed25519, None);
    let wrong = sshd.dir().join("wrong_known_hosts");
    fs::write(&wrong, format!("{}\n", sshd.known_hosts_line(&other.public_line))).unwrap();

    let output = run(sshd.ssh_command_with(&sshd.user_key().private_path, &wrong).arg("true"));

    assert!(!output.status.success(), "ssh accepted a wrong host key");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn sshd_serves_every_host_key_type_listed_in_known_hosts() {
    let sshd = Sshd::builder().start();
    let kinds: Vec<KeyType> = sshd.host_keys().iter().map(|key| key.kind).collect();
    assert_eq!(kinds, KeyType::ALL);

    for kind in KeyType::ALL {
        let algorithm = format!("HostKeyAlgorithms={}", kind.host_key_algorithm());
        let output = run(sshd.ssh_command().args(["-o", &algorithm, "true"]));
        assert!(output.status.success(), "{kind:?}: {}", describe(&output, &sshd));
    }
}

#[test]
fn sshd_accepts_every_user_key_type_and_authorized_extra_keys() {
    let sshd = Sshd::builder().user_key(KeyType::Rsa).start();
    assert_eq!(sshd.user_key().kind, KeyType::Rsa);
    let output = run(sshd.ssh_command().arg("true"));
    assert!(output.status.success(), "rsa user key: {}", describe(&output, &sshd));

    let ecdsa = generate_key(sshd.dir(), KeyType::Ecdsa, None);
    let refused = run(sshd.ssh_command_with(&ecdsa.private_path, sshd.known_hosts()).arg("true"));
    assert!(!refused.status.success(), "an unauthorized key logged in");
    sshd.authorize(&ecdsa.public_line);
    let output = run(sshd.ssh_command_with(&ecdsa.private_path, sshd.known_hosts()).arg("true"));
    assert!(output.status.success(), "authorized ecdsa key: {}", describe(&output, &sshd));
}

#[test]
fn sshd_extra_config_overrides_the_defaults() {
    let sshd = Sshd::builder().extra_config("PubkeyAuthentication no").start();

    let output = run(sshd.ssh_command().arg("true"));

    assert!(!output.status.success(), "pubkey login worked though it was turned off");
    assert!(String::from_utf8_lossy(&output.stderr).contains("Permission denied"));
}

#[test]
fn sshd_restart_keeps_port_and_host_keys_and_ends_sessions() {
    let mut sshd = Sshd::builder().start();
    let (port, first_pid) = (sshd.port(), sshd.pid().unwrap());
    let mut session = sshd.ssh_command().arg("sleep 60").spawn().expect("start ssh session");
    std::thread::sleep(Duration::from_millis(500));

    sshd.stop();
    // The session's server side died with the listener, so the client exits on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = session.try_wait().expect("poll ssh session") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = session.kill();
            panic!("ssh session still open 10 s after sshd stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "session ended cleanly though sshd was killed");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts");
    sshd.start();

    assert_eq!(sshd.port(), port);
    assert_ne!(sshd.pid(), Some(first_pid));
    let output = run(sshd.ssh_command().arg("true"));
    assert!(output.status.success(), "after restart: {}", describe(&output, &sshd));
}

#[test]
fn encrypted_key_opens_only_with_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let key = generate_key(dir.path(), KeyType::Ed25519, Some("open sesame"));
    let derive = |passphrase: &str| {
        run(Command::new(require("ssh-keygen"))
            .args(["-y", "-P", passphrase, "-f"])
            .arg(&key.private_path))
    };

    let opened = derive("open sesame");
    assert!(opened.status.success(), "{}", String::from_utf8_lossy(&opened.stderr));
    let derived = String::from_utf8_lossy(&opened.stdout);
    assert!(key.public_line.starts_with(derived.trim()), "{derived} vs {}", key.public_line);
    assert!(!derive("wrong").status.success(), "wrong passphrase opened the key");
}

#[test]
fn redis_cluster_mode_answers_cluster_slots_with_its_announced_address() {
    let redis = RedisServer::builder()
        .password("p")
        .cluster()
        .extra_config("cluster-announce-ip 10.0.0.9")
        .start();

    assert!(redis.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
    let slots = redis.cli(&["CLUSTER", "SLOTS"]);
    assert!(slots.contains("10.0.0.9"), "CLUSTER SLOTS names no announced address: {slots}");
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
}

/// Waits until something accepts on `port` (an `ssh -L` listener coming up).
fn wait_accepting(port: u16, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ssh -L exited early: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "ssh -L never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sshd_forwards_a_local_port_to_redis() {
    let sshd = Sshd::builder().start();
    let redis = RedisServer::builder().password("through the tunnel").start();
    let local = mesh_testkit::free_port();
    let forward = format!("{local}:127.0.0.1:{}", redis.port());
    let mut tunnel = sshd
        .ssh_command()
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &forward])
        .spawn()
        .expect("start ssh -L");
    wait_accepting(local, &mut tunnel);

    let mut stream = connect(local);
    let reply = resp(&mut stream, &["AUTH", redis.password().unwrap().expose()]);
    let pong = resp(&mut stream, &["PING"]);
    let _ = tunnel.kill();
    let _ = tunnel.wait();

    assert_eq!((reply.as_str(), pong.as_str()), ("+OK", "+PONG"));
    assert!(sshd.wait_for_log("direct-tcpip", Duration::from_secs(5)), "sshd logged no channel");
}

#[test]
fn sshd_known_hosts_variants_hold_only_the_asked_keys_or_hashed_names() {
    let sshd = Sshd::builder().start();
    let rsa_only = sshd.known_hosts_only(&[KeyType::Rsa]);
    let key = &sshd.user_key().private_path;

    let output = run(sshd.ssh_command_with(key, &rsa_only).arg("true"));
    assert!(output.status.success(), "rsa-only known_hosts: {}", describe(&output, &sshd));
    let ed25519 = ["-o", "HostKeyAlgorithms=ssh-ed25519", "true"];
    let refused = run(sshd.ssh_command_with(key, &rsa_only).args(ed25519));
    assert!(!refused.status.success(), "ed25519 host key accepted by an rsa-only known_hosts");

    let hashed = sshd.known_hosts_hashed();
    let text = fs::read_to_string(&hashed).unwrap();
    assert!(text.starts_with("|1|") && !text.contains("127.0.0.1"), "not hashed: {text}");
    let output = run(sshd.ssh_command_with(key, &hashed).arg("true"));
    assert!(output.status.success(), "hashed known_hosts: {}", describe(&output, &sshd));
}

/// Set in the child copy of the test binary that `servers_die_when_the_test_process_is_killed`
/// starts and then kills.
const ORPHAN_ROLE: &str = "MESH_TESTKIT_ORPHAN_ROLE";

#[test]
fn servers_die_when_the_test_process_is_killed() {
    if std::env::var_os(ORPHAN_ROLE).is_some() {
        // Child role: start servers, report their pids, and wait to be killed.
        let redis = RedisServer::builder().start();
        let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
        println!("dirs {} {}", redis.dir().display(), sshd.dir().display());
        println!("pids {} {}", redis.pid().unwrap(), sshd.pid().unwrap());
        std::thread::sleep(Duration::from_secs(120));
        panic!("the parent test never killed this child");
    }

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "servers_die_when_the_test_process_is_killed", "--nocapture"])
        .env(ORPHAN_ROLE, "child")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the child test process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut reported = |prefix: &str| -> Vec<String> {
        let line = lines.by_ref().find_map(|line| line.strip_prefix(prefix).map(str::to_owned));
        line.unwrap_or_else(|| panic!("child reported no `{prefix}` line"))
            .split(' ')
            .map(str::to_owned)
            .collect()
    };
    let dirs = reported("dirs ");
    let pids: Vec<u32> = reported("pids ").iter().map(|pid| pid.parse().unwrap()).collect();

    child.kill().unwrap();
    child.wait().unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for pid in pids {
        // Gone, or a zombie waiting for init: either way no longer serving.
        while fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(std::time::Instant::now() < deadline, "server {pid} outlived its test process");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Nobody ran the child's destructors: its temp dirs are ours to remove.
    for dir in dirs {
        fs::remove_dir_all(&dir).unwrap_or_else(|err| panic!("cannot remove {dir}: {err}"));
    }
}

/// Processes whose command line is exactly `words`.
fn processes_running(words: &[&str]) -> Vec<String> {
    let wanted = words.join("\0") + "\0";
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
        })
        .collect()
}

#[test]
fn frozen_sshd_leaves_keepalives_unanswered_until_thawed() {
    let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    let mut session = sshd
        .ssh_command()
        .args(["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2", "sleep 61"])
        .spawn()
        .expect("start ssh session");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(session.try_wait().unwrap(), None, "session ended before the freeze");

    sshd.freeze();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = session.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = session.kill();
            panic!("ssh never noticed the frozen server");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    sshd.thaw();

    let output = run(sshd.ssh_command().arg("true"));
    assert!(output.status.success(), "after thaw: {}", describe(&output, &sshd));

    // The session's `sleep` outlived its client (sshd does not end a command whose client
    // left); dropping the server must still end it.
    drop(sshd);
    let strays = processes_running(&["sleep", "61"]);
    assert!(strays.is_empty(), "session commands outlived the server: {strays:?}");
}

#[test]
fn frozen_redis_accepts_but_answers_nothing_until_thawed() {
    let redis = RedisServer::builder().start();
    let mut stream = connect(redis.port());

    redis.freeze();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    let silent = BufReader::new(&stream).read_line(&mut line);
    assert!(silent.is_err(), "a frozen redis answered {line:?}");
    redis.thaw();

    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(&stream).read_line(&mut line).expect("reply after thaw");
    assert_eq!(line.trim_end(), "+PONG");
}
