//! `cargo xtask tunnel` through the built binary against real OpenSSH sshd and
//! redis-server: detached start, status, stop, stale state, service files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_testkit::{free_port, RedisServer, Sshd, StateDir};

/// A bastion, a Redis behind it, and a private state root and home.
struct Rig {
    sshd: Sshd,
    redis: RedisServer,
    state: StateDir,
    home: tempfile::TempDir,
    env_file: PathBuf,
    local_port: u16,
}

impl Rig {
    fn start() -> Rig {
        let sshd = Sshd::builder().start();
        let redis = RedisServer::builder().password("tunnel-test-pw").start();
        Rig::with(sshd, redis, None)
    }

    /// `known_hosts` replaces the sshd's own known_hosts file when given.
    fn with(sshd: Sshd, redis: RedisServer, known_hosts: Option<&Path>) -> Rig {
        let home = tempfile::tempdir().unwrap();
        let local_port = free_port();
        let env_file = home.path().join("tunnel.env");
        let known_hosts = known_hosts.unwrap_or(sshd.known_hosts());
        std::fs::write(
            &env_file,
            format!(
                "BASTION_HOST_IP=127.0.0.1\nBASTION_PORT={}\nBASTION_USER={}\nBASTION_KEY_FILE={}\n\
                 BASTION_KNOWN_HOSTS={}\nELASTICACHE_ENDPOINT=127.0.0.1:{}\nREDIS_TUNNEL_PORT={}\n\
                 REDIS_PASSWORD=tunnel-test-pw\n",
                sshd.port(),
                sshd.user(),
                sshd.user_key().private_path.display(),
                known_hosts.display(),
                redis.port(),
                local_port,
            ),
        )
        .unwrap();
        Rig { sshd, redis, state: StateDir::new(), home, env_file, local_port }
    }

    /// Runs `cargo xtask --env-file <rig> tunnel <args>` with a clean environment.
    fn xtask(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.arg("--env-file").arg(&self.env_file).arg("tunnel").args(args);
        cmd.env_clear()
            .env("HOME", self.home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1");
        self.state.apply(&mut cmd);
        cmd
    }

    /// The one tunnel state directory under the state root.
    fn tunnel_dir(&self) -> PathBuf {
        // `dev` keeps its service logs beside the tunnels, in `logs`.
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.state.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("logs"))
            .collect();
        assert_eq!(dirs.len(), 1, "one configuration, one directory: {dirs:?}");
        dirs.remove(0)
    }
}

impl Drop for Rig {
    /// Never leave a detached tunnel behind, even when an assertion failed.
    fn drop(&mut self) {
        let _ =
            self.command(&["stop", "--all"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it holds no port, lock or socket.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn redis_ping(rig: &Rig) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &rig.local_port.to_string(), "--no-auth-warning", "PING"])
        .env("REDISCLI_AUTH", "tunnel-test-pw")
        .output()
        .expect("redis-cli runs: apt-get install redis-tools");
    text(&out.stdout).trim().to_owned()
}

#[test]
fn start_detach_status_stop_leaves_no_process_socket_or_pid_file() {
    let rig = Rig::start();

    let out = rig.xtask(&["start", "--detach"]);
    assert!(
        out.status.success(),
        "start --detach failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains(" up through "), "{stdout}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{} -> 127.0.0.1:{}", rig.local_port, rig.redis.port())),
        "{stdout}"
    );
    assert_eq!(redis_ping(&rig), "PONG");

    let dir = rig.tunnel_dir();
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("control.sock")), 0o600);
    assert_eq!(mode(&dir.join("tunnel.log")), 0o600);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(!config.contains("tunnel-test-pw"), "no secret in config.json");

    let out = rig.xtask(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exit_code"], 0);
    let tunnel = &json["tunnels"][0];
    assert_eq!(tunnel["state"], "up");
    assert_eq!(tunnel["health"]["ok"], true, "{tunnel}");
    let pid = tunnel["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    let forward = &tunnel["status"]["tunnel"]["forwards"][0];
    assert_eq!(forward["name"], "redis");
    assert_eq!(forward["local_port"], rig.local_port);
    // The redis-cli PING above; the health PING comes after this snapshot.
    assert_eq!(forward["total_connections"], 1, "{forward}");
    assert!(
        forward["bytes_up"].as_u64().unwrap() > 0 && forward["bytes_down"].as_u64().unwrap() > 0
    );
    assert_eq!(tunnel["status"]["config"]["bastion_port"], rig.sshd.port());
    assert!(!text(&out.stdout).contains("tunnel-test-pw"));

    let out = rig.xtask(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let human = text(&out.stdout);
    assert!(human.contains(&format!("  up  pid {pid}")), "{human}");
    assert!(human.contains("FORWARD") && human.contains("health: PONG"), "{human}");

    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains(&format!("is already running (pid {pid})")),
        "{}",
        text(&out.stdout)
    );

    let out = rig.xtask(&["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(&format!("(pid {pid}) stopped\n")),
        "{}",
        text(&out.stdout)
    );
    assert!(!alive(pid), "the tunnel process is gone");
    assert!(!dir.join("control.sock").exists());
    assert!(!dir.join("tunnel.pid").exists());
    assert!(dir.join("tunnel.log").exists(), "the log stays for `tunnel logs`");

    let out = rig.xtask(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stdout),
        "no tunnel is running: start one with `cargo xtask tunnel start --detach`\n"
    );
}

#[test]
fn stop_falls_back_to_sigterm_when_the_control_socket_is_gone() {
    let rig = Rig::start();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = rig.tunnel_dir();
    let pid: u32 = std::fs::read_to_string(dir.join("tunnel.pid")).unwrap().trim().parse().unwrap();
    std::fs::remove_file(dir.join("control.sock")).unwrap();

    let out = rig.xtask(&["status"]);
    assert_eq!(out.status.code(), Some(1), "locked but not answering: {}", text(&out.stdout));

    let out = rig.xtask(&["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("stopped with SIGTERM (its control socket did not answer)"),
        "{}",
        text(&out.stdout)
    );
    assert!(!alive(pid));
    assert!(!dir.join("tunnel.pid").exists());
    let log = std::fs::read_to_string(dir.join("tunnel.log")).unwrap();
    assert!(log.contains("stopping the tunnel"), "a graceful stop on SIGTERM:\n{log}");
}

#[test]
fn detach_reports_the_childs_reason_when_the_host_key_is_unknown() {
    let sshd = Sshd::builder().start();
    let redis = RedisServer::builder().start();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let rig = Rig::with(sshd, redis, Some(empty.path()));

    let started = Instant::now();
    let out = rig.xtask(&["start", "--detach", "--wait", "30"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let dir = rig.tunnel_dir();
    let expected_start = format!(
        "error: tunnel process exited (exit status: 1) before every forward was verified: \
         the bastion 127.0.0.1:{} is not in {}; its ED25519 key fingerprint is SHA256:",
        rig.sshd.port(),
        empty.path().display()
    );
    assert!(stderr.starts_with(&expected_start), "{stderr}");
    let expected_end = format!(
        ". Check it with the bastion's owner, then run again with --accept-new to record it\n       \
         (log: {})\n",
        dir.join("tunnel.log").display()
    );
    assert!(stderr.ends_with(&expected_end), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast, not at the deadline");
    assert!(!dir.join("tunnel.pid").exists() && !dir.join("control.sock").exists());
}

#[test]
fn stale_pid_file_of_a_crashed_run_is_cleaned_and_its_pid_never_signalled() {
    let rig = Rig::start();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = rig.tunnel_dir();
    let pid: u32 = std::fs::read_to_string(dir.join("tunnel.pid")).unwrap().trim().parse().unwrap();

    // Simulate a crash: SIGKILL leaves the pid file and socket; then the pid
    // file is made to name an unrelated process.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(dir.join("tunnel.pid"), format!("{}\n", sleeper.id())).unwrap();
    assert!(dir.join("control.sock").exists());

    let out = rig.xtask(&["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("was not running; removed what a crashed run left: "), "{stdout}");
    assert!(sleeper.try_wait().unwrap().is_none(), "the unrelated process is untouched");
    assert!(!dir.join("tunnel.pid").exists() && !dir.join("control.sock").exists());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // And a fresh start works on the cleaned state.
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(rig.xtask(&["stop"]).status.success());
}

#[test]
fn foreground_start_stops_cleanly_on_sigterm_and_sighup() {
    let rig = Rig::start();
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP] {
        let mut child =
            rig.command(&["start"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis_ping(&rig) != "PONG" {
            assert!(Instant::now() < deadline, "foreground tunnel never came up");
            assert!(child.try_wait().unwrap().is_none(), "foreground tunnel exited early");
            std::thread::sleep(Duration::from_millis(100));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{signal}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).ends_with(&format!("stopped ({})\n", signal.as_str())),
            "{}",
            text(&out.stdout)
        );
        let dir = rig.tunnel_dir();
        assert!(!dir.join("tunnel.pid").exists() && !dir.join("control.sock").exists());
    }
}

#[test]
fn status_with_no_tunnel_exits_3_and_logs_without_a_log_says_how_to_get_one() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    let out = rig.xtask(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({ "tunnels": [], "exit_code": 3 }));

    let out = rig.xtask(&["logs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: no log at "), "{}", text(&out.stderr));
}

#[test]
fn install_writes_a_systemd_user_unit_and_uninstall_removes_it() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    let out = rig.xtask(&["install"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit_path = rig.home.path().join(".config/systemd/user/mesh-dev-tunnel.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("\nRestart=on-failure\n"), "{unit}");
    assert!(
        unit.contains(&format!("--env-file {} tunnel start\n", rig.env_file.display())),
        "{unit}"
    );
    assert!(unit.contains(&format!("Environment=XTASK_STATE_DIR={}\n", rig.state.path().display())));
    assert!(!unit.contains("tunnel-test-pw"), "no secret in the unit");
    assert!(text(&out.stdout).contains("systemctl --user enable --now mesh-dev-tunnel.service"));
    // The unit reads only its --env-file: the passphrase advice names that file.
    assert!(
        text(&out.stdout).ends_with(&format!(
            "or its passphrase in BASTION_KEY_PASSPHRASE in {}\n",
            rig.env_file.display()
        )),
        "{}",
        text(&out.stdout)
    );

    let out = rig.xtask(&["uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unit_path.exists());
}

/// Runs a compatibility script with a stub `cargo` first on PATH that prints
/// its working directory and arguments and exits with 3.
fn run_script(script: &str, args: &[&str]) -> Output {
    let stub_dir = tempfile::tempdir().unwrap();
    let stub = stub_dir.path().join("cargo");
    std::fs::write(&stub, "#!/bin/sh\necho \"$(pwd) $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path =
        format!("{}:{}", stub_dir.path().display(), std::env::var("PATH").unwrap_or_default());
    Command::new(root.join(script)).args(args).current_dir("/").env("PATH", path).output().unwrap()
}

#[test]
fn compatibility_scripts_exec_the_xtask_from_the_checkout_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().display().to_string();
    let cases: [(&str, &[&str], &str); 5] = [
        ("scripts/elasticache-tunnel.sh", &["start"], "xtask tunnel start --detach"),
        ("scripts/elasticache-tunnel.sh", &["restart"], "xtask tunnel restart --detach"),
        ("scripts/elasticache-tunnel.sh", &["status", "--json"], "xtask tunnel status --json"),
        ("scripts/elasticache-tunnel.sh", &["stop"], "xtask tunnel stop"),
        ("scripts/aws/connect-elasticache.sh", &[], "xtask tunnel start"),
    ];
    for (script, args, expected) in cases {
        let out = run_script(script, args);
        assert_eq!(out.status.code(), Some(3), "{script} passes the exit code through");
        assert_eq!(text(&out.stdout), format!("{root} {expected}\n"), "{script} {args:?}");
    }

    let out = run_script("scripts/elasticache-tunnel.sh", &["bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("usage: "), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "cargo is not run for an unknown verb");
}

/// Polls `status --json` until its exit code is `code`; returns the report.
fn wait_for_status(rig: &Rig, code: i32, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let out = rig.xtask(&["status", "--json"]);
        if out.status.code() == Some(code) {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "status never exited {code}; last: {:?}\n{}",
            out.status.code(),
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_exits_1_while_reconnecting_and_0_once_the_bastion_is_back() {
    let mut rig = Rig::start();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    rig.sshd.stop();
    let json = wait_for_status(&rig, 1, Duration::from_secs(30));
    assert_eq!(json["tunnels"][0]["state"], "reconnecting", "{json}");
    let out = rig.xtask(&["status"]);
    assert!(text(&out.stdout).contains("  reconnecting  pid "), "{}", text(&out.stdout));

    rig.sshd.start();
    let json = wait_for_status(&rig, 0, Duration::from_secs(60));
    assert_eq!(json["tunnels"][0]["state"], "up");
    assert!(json["tunnels"][0]["status"]["tunnel"]["reconnects"].as_u64().unwrap() >= 1);
    assert_eq!(redis_ping(&rig), "PONG");
}

#[test]
fn restart_replaces_the_process_and_logs_show_both_runs() {
    let rig = Rig::start();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid_file = rig.tunnel_dir().join("tunnel.pid");
    let first = std::fs::read_to_string(&pid_file).unwrap();

    let out = rig.xtask(&["restart", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = std::fs::read_to_string(&pid_file).unwrap();
    assert_ne!(first, second);
    assert!(!alive(first.trim().parse().unwrap()));
    assert_eq!(redis_ping(&rig), "PONG");

    let out = rig.xtask(&["logs", "-n", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stdout);
    assert_eq!(log.matches("tunnel up, every forward verified").count(), 2, "{log}");
    assert!(log.contains("stop requested over the control socket"), "{log}");
    let out = rig.xtask(&["logs", "-n", "1"]);
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn status_exits_4_when_a_running_tunnel_answers_garbage_and_3_after_stale_cleanup() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    let dir = rig.state.path().join("fake-0000abcd");
    std::fs::create_dir_all(&dir).unwrap();

    // A "tunnel" this test plays: it holds the pid lock and answers nonsense.
    let pid_file = std::fs::File::create(dir.join("tunnel.pid")).unwrap();
    let lock =
        nix::fcntl::Flock::lock(pid_file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.join("control.sock")).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
        stream.write_all(b"not json\n").unwrap();
    });

    let out = rig.xtask(&["status"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("fake-0000abcd  unknown  \n  cannot read its state: control socket "),
        "{stdout}"
    );
    assert!(
        stdout.contains("sent an unexpected reply: expected ident at line 1 column 2: not json"),
        "{stdout}"
    );

    // The "tunnel" crashes: lock released, files left behind.
    drop(lock);
    let out = rig.xtask(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stdout),
        format!(
            "fake-0000abcd  not running  \n  removed what a crashed run left: {}, {}\n",
            dir.join("control.sock").display(),
            dir.join("tunnel.pid").display()
        )
    );
    assert!(!dir.join("control.sock").exists() && !dir.join("tunnel.pid").exists());
}

#[test]
fn ctrl_c_while_connecting_to_a_silent_bastion_exits_0_and_frees_the_port() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    // A "bastion" that accepts TCP and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = std::fs::read_to_string(&rig.env_file).unwrap();
    let env = env.replace(
        &format!("BASTION_PORT={}\n", rig.sshd.port()),
        &format!("BASTION_PORT={}\n", silent.local_addr().unwrap().port()),
    );
    std::fs::write(&rig.env_file, env).unwrap();

    let child =
        rig.command(&["start"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let _held = silent.accept().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("tunnel: listening, connecting to "), "{stdout}");
    assert!(stdout.ends_with(" not started (interrupted)\n"), "{stdout}");
    std::net::TcpListener::bind(("127.0.0.1", rig.local_port))
        .expect("the local port is free again");
    assert!(!rig.tunnel_dir().join("tunnel.pid").exists());
}

#[test]
fn accept_new_reaches_the_detached_child_and_records_the_host_key() {
    let sshd = Sshd::builder().start();
    let redis = RedisServer::builder().start();
    let known_hosts = tempfile::NamedTempFile::new().unwrap();
    let rig = Rig::with(sshd, redis, Some(known_hosts.path()));

    let out = rig.xtask(&["start", "--detach", "--accept-new"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded = std::fs::read_to_string(known_hosts.path()).unwrap();
    assert!(recorded.contains(&format!("[127.0.0.1]:{} ", rig.sshd.port())), "{recorded}");
    assert!(rig.xtask(&["stop"]).status.success());
}

#[test]
fn non_loopback_bind_without_the_flag_is_a_usage_error() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    let mut env = std::fs::read_to_string(&rig.env_file).unwrap();
    env.push_str("TUNNEL_BIND_ADDRESS=0.0.0.0\n");
    std::fs::write(&rig.env_file, env).unwrap();

    for args in [&["start"][..], &["start", "--detach"][..]] {
        let out = rig.xtask(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.ends_with(
                "error: TUNNEL_BIND_ADDRESS=0.0.0.0 would expose Redis to other machines: pass \
                 --allow-remote-bind if that is intended, or unset it to bind loopback only\n"
            ),
            "{stderr}"
        );
    }
    assert!(std::fs::read_dir(rig.state.path()).unwrap().next().is_none(), "nothing started");
}

#[test]
fn ssh_config_host_alias_gives_hostname_port_user_and_identity_file() {
    let rig = Rig::start();
    let ssh_dir = rig.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::write(
        ssh_dir.join("config"),
        format!(
            "Host dev-bastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n",
            rig.sshd.port(),
            rig.sshd.user(),
            rig.sshd.user_key().private_path.display()
        ),
    )
    .unwrap();
    // The alias's known_hosts line names the address it dials, as OpenSSH's would.
    std::fs::write(
        &rig.env_file,
        format!(
            "BASTION_HOST_IP=dev-bastion\nBASTION_KNOWN_HOSTS={}\n\
             ELASTICACHE_ENDPOINT=127.0.0.1:{}\nREDIS_TUNNEL_PORT={}\nREDIS_PASSWORD=tunnel-test-pw\n",
            rig.sshd.known_hosts().display(),
            rig.redis.port(),
            rig.local_port,
        ),
    )
    .unwrap();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let status = rig.xtask(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{}@127.0.0.1:{}", rig.sshd.user(), rig.sshd.port())),
        "the record names the bastion as dialled: {stdout}"
    );
    assert_eq!(redis_ping(&rig), "PONG");
    assert!(rig.xtask(&["stop"]).status.success());
}

#[test]
fn fail_missing_or_directory_key_file_is_a_configuration_error() {
    let home = tempfile::tempdir().unwrap();
    let state = StateDir::new();
    std::fs::create_dir(home.path().join("keydir")).unwrap();
    for key in ["nokey", "keydir"] {
        let key = home.path().join(key);
        let env_file = home.path().join("key.env");
        std::fs::write(
            &env_file,
            format!(
                "BASTION_HOST_IP=127.0.0.1\nBASTION_PORT={}\nBASTION_KEY_FILE={}\n\
                 ELASTICACHE_ENDPOINT=127.0.0.1:6379\nREDIS_TUNNEL_PORT={}\n",
                free_port(),
                key.display(),
                free_port()
            ),
        )
        .unwrap();
        let why = if key.ends_with("nokey") {
            "No such file or directory (os error 2)"
        } else {
            "it is not a regular file"
        };
        for args in [&["start"][..], &["start", "--detach"][..]] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
            cmd.arg("--env-file").arg(&env_file).arg("tunnel").args(args);
            cmd.env_clear().env("HOME", home.path()).env("NO_COLOR", "1");
            let out = state.apply(&mut cmd).output().unwrap();
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            let message = format!(
                "cannot read the private key {}: {why}: check BASTION_KEY_FILE",
                key.display()
            );
            assert!(
                stderr.contains(&format!("error: {message}"))
                    || stderr.contains(&format!("before every forward was verified: {message}")),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn fail_wait_0_is_refused_at_parse_time_with_the_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["tunnel", "start", "--detach", "--wait", "0"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: invalid value '0' for '--wait <SECONDS>': 0 is out of range: use a whole number \
         from 1 to 3600\n\nFor more information, try '--help'.\n"
    );
}

/// The pid the running tunnel of `rig` wrote to its pid file.
fn tunnel_pid(rig: &Rig) -> u32 {
    std::fs::read_to_string(rig.tunnel_dir().join("tunnel.pid")).unwrap().trim().parse().unwrap()
}

/// Waits until Redis answers through the rig's forward, while `child` runs.
fn wait_for_forward(rig: &Rig, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_ping(rig) != "PONG" {
        assert!(Instant::now() < deadline, "the tunnel never came up");
        assert!(child.try_wait().unwrap().is_none(), "the tunnel process exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `dev` run by a test, interrupted (then killed) however the test ends.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        if self.0.try_wait().unwrap_or(None).is_none() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.0.try_wait().unwrap_or(None).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn stop_refuses_the_tunnel_dev_runs_and_never_signals_dev() {
    let rig = Rig::start();
    let manifest = rig.home.path().join("services.toml");
    std::fs::write(&manifest, "[services.app]\ncommand = [\"sleep\", \"300\"]\ncwd = \".\"\n")
        .unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_xtask"));
    dev.current_dir(rig.home.path())
        .arg("--env-file")
        .arg(&rig.env_file)
        .args(["dev", "--skip-checks", "--manifest"])
        .arg(&manifest)
        .env_clear()
        .env("HOME", rig.home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    rig.state.apply(&mut dev);
    let mut dev = Dev(dev.spawn().unwrap());
    wait_for_forward(&rig, &mut dev.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rig.tunnel_dir().join("control.sock").exists() {
        assert!(Instant::now() < deadline, "dev never served the control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refusal = format!(
        "tunnel {} belongs to `cargo xtask dev` (pid {}): stop dev with Ctrl+C there",
        rig.tunnel_dir().file_name().unwrap().to_str().unwrap(),
        dev.0.id()
    );

    let started = Instant::now();
    let out = rig.xtask(&["stop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), format!("error: {refusal}\n"));
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after a grace");

    let out = rig.xtask(&["stop", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{refusal}\n"));

    let out = rig.xtask(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tunnels"][0]["owner"], "dev", "{json}");
    assert_eq!(json["tunnels"][0]["status"]["config"]["owner"], "dev", "{json}");
    let out = rig.xtask(&["status"]);
    assert!(
        text(&out.stdout).contains(&format!("  pid {}, run by `cargo xtask dev`\n", dev.0.id())),
        "{}",
        text(&out.stdout)
    );

    assert!(dev.0.try_wait().unwrap().is_none(), "dev still runs");
    assert_eq!(redis_ping(&rig), "PONG", "and so does its tunnel");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(dev.0.wait().unwrap().code(), Some(0));
}

#[test]
fn restart_of_a_detached_tunnel_without_the_flag_stays_detached() {
    let rig = Rig::start();
    let out = rig.xtask(&["start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = tunnel_pid(&rig);

    // Foreground, `restart` would not return: run it with a deadline.
    let mut restart =
        rig.command(&["restart"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while restart.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            restart.kill().unwrap();
            panic!("restart ran the tunnel in the foreground");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = restart.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(" up through "), "{}", text(&out.stdout));
    let second = tunnel_pid(&rig);
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(redis_ping(&rig), "PONG");
    let out = rig.xtask(&["status"]);
    assert!(text(&out.stdout).contains(&format!("  pid {second}, detached\n")));
}

#[test]
fn restart_keeps_a_foreground_tunnel_in_the_foreground_and_detach_forces_background() {
    let rig = Rig::start();
    let mut first =
        rig.command(&["start"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_forward(&rig, &mut first);
    let out = rig.xtask(&["status"]);
    assert!(text(&out.stdout).contains(&format!("  pid {}, foreground\n", first.id())));

    let mut second =
        rig.command(&["restart"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("stopped (stop requested)\n"), "{}", text(&out.stdout));
    wait_for_forward(&rig, &mut second);
    assert_eq!(tunnel_pid(&rig), second.id(), "the restart runs it in its own process");

    let out = rig.xtask(&["restart", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = second.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let third = tunnel_pid(&rig);
    let out = rig.xtask(&["status"]);
    assert!(text(&out.stdout).contains(&format!("  pid {third}, detached\n")));
    assert_eq!(redis_ping(&rig), "PONG");
}

#[test]
fn start_detach_json_when_running_prints_the_start_fields_and_logs_json_is_refused() {
    let rig = Rig::start();
    let out = rig.xtask(&["--json", "start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&started["state"], &started["already_running"]), (&"up".into(), &false.into()));

    let out = rig.xtask(&["--json", "start", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["already_running"], true, "{again}");
    assert_eq!(again["state"], "up");
    assert_eq!(again["pid"], started["pid"]);
    assert_eq!(again["config"], started["config"]);

    let out = rig.xtask(&["--json", "logs"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: `tunnel logs` has no --json output: the log is plain text, one line per event; \
         run it without --json\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn connect_timeout_comes_from_tunnel_connect_timeout_and_the_message_names_it() {
    let rig = Rig::with(Sshd::builder().start(), RedisServer::builder().start(), None);
    // A "bastion" that completes the TCP handshake (the backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = std::fs::read_to_string(&rig.env_file).unwrap().replace(
        &format!("BASTION_PORT={}\n", rig.sshd.port()),
        &format!(
            "BASTION_PORT={}\nTUNNEL_CONNECT_TIMEOUT=1\n",
            silent.local_addr().unwrap().port()
        ),
    );
    std::fs::write(&rig.env_file, env).unwrap();

    let started = Instant::now();
    let out = rig.xtask(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("timed out after 1s during "), "{stderr}");
    assert!(stderr.ends_with(", or raise TUNNEL_CONNECT_TIMEOUT\n"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "not the 15 s default");
}
