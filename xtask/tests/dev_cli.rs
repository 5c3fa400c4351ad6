//! `cargo xtask dev` refusing to start, through the built binary: what the
//! user sees when the platform checkout is missing; and `dev --sandbox`
//! killed outright, which must leave no service running.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{alive, descendants, env_value};

/// `cargo xtask ARGS` run in `dir`, with its state and HOME there and no MESH_ROOT.
fn xtask_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .args(args)
        .env("XTASK_STATE_DIR", dir.join("state"))
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env_remove("MESH_ROOT")
        .output()
        .unwrap()
}

#[test]
fn fail_default_manifest_without_checkout_says_how_to_set_mesh_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dev.env"),
        "ELASTICACHE_ENDPOINT=127.0.0.1\nUSE_SSH_TUNNEL_FOR_REDIS=false\nMESH_ROOT=/nonexistent/mesh\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir.path())
        .args(["--env-file", "dev.env", "dev"])
        .env("XTASK_STATE_DIR", dir.path().join("state"))
        .env("NO_COLOR", "1")
        .env_remove("MESH_ROOT")
        .output()
        .unwrap();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../services.toml");
    let manifest = std::path::Path::new(manifest).canonicalize().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: service `rest-api`: working directory /nonexistent/mesh/apps/rest-api does \
             not exist; it is built from MESH_ROOT=/nonexistent/mesh in {}: point MESH_ROOT at \
             your checkout of the platform (the directory holding `apps/`), in .env.local or the \
             shell, e.g. `MESH_ROOT=$HOME/src/developer-mesh`\n",
            manifest.display()
        )
    );
}

#[test]
fn fail_doctor_blocker_stops_dev_before_anything_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bastion.pem");
    std::fs::write(&key, "not really a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        dir.path().join("dev.env"),
        format!(
            "BASTION_HOST_IP=127.0.0.1\nBASTION_KEY_FILE={}\nELASTICACHE_ENDPOINT=cache.internal\n",
            key.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("services.toml"),
        "[services.app]\ncommand = [\"sleep\", \"30\"]\ncwd = \".\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir.path())
        .args(["--env-file", "dev.env", "dev", "--manifest", "services.toml"])
        .env("XTASK_STATE_DIR", dir.path().join("state"))
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A key readable by others is the configuration's to fix: exit 2, as `tunnel start` says.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("chmod 600 {}", key.display())), "{stderr}");
    assert!(
        stderr.ends_with(
            "error: the checks above found what would stop `dev`: apply their fixes (`cargo \
             xtask doctor --fix` does the safe ones), or pass --skip-checks to start anyway\n"
        ),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tunnel"));
}

#[test]
fn doctor_with_the_sandbox_env_file_checks_its_bastion_redis_and_the_real_services_and_skips_aws() {
    let dir = tempfile::tempdir().unwrap();
    let xtask = |args: &[&str]| xtask_in(dir.path(), args);
    let up = xtask(&["sandbox", "up", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let json: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let env_file = json["env_file"].as_str().unwrap().to_string();

    // Without --sandbox, `dev` would run the manifest's real services: they are checked.
    let services = xtask(&["--env-file", &env_file, "doctor", "--quick"]);
    let doctor = xtask(&["--env-file", &env_file, "doctor", "--no-services"]);
    let down = xtask(&["sandbox", "down"]);
    let report = String::from_utf8_lossy(&services.stdout);
    assert_eq!(services.status.code(), Some(1), "{report}");
    assert!(report.contains("[✗] Services"), "{report}");
    assert!(
        report.contains(
            "for the sandbox's stand-in services run `cargo xtask dev --sandbox`, or leave \
             services out with --no-services"
        ),
        "{report}"
    );
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(0), "{report}");
    assert!(report.contains("[-] AWS"), "{report}");
    assert!(report.contains("[✓] Bastion"), "{report}");
    assert!(report.contains("[✓] Redis"), "{report}");
    assert!(down.status.success());
}

#[test]
fn sandbox_down_stops_the_tunnel_started_by_hand_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let xtask = |args: &[&str]| xtask_in(dir.path(), args);
    /// Stops whatever a failed assertion would leave running.
    struct Cleanup<F: Fn(&[&str]) -> std::process::Output>(F);
    impl<F: Fn(&[&str]) -> std::process::Output> Drop for Cleanup<F> {
        fn drop(&mut self) {
            (self.0)(&["tunnel", "stop", "--all"]);
            (self.0)(&["sandbox", "down"]);
        }
    }
    let _cleanup = Cleanup(xtask);
    let up = xtask(&["sandbox", "up", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let json: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let env_file = json["env_file"].as_str().unwrap().to_string();
    // What `sandbox up` suggests as the next step.
    let start = xtask(&["--env-file", &env_file, "tunnel", "start", "--detach"]);
    let status = xtask(&["--env-file", &env_file, "tunnel", "status", "--json"]);
    let down = xtask(&["sandbox", "down"]);
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = status["tunnels"][0]["pid"].as_u64().expect("the tunnel's pid") as u32;

    let said = String::from_utf8_lossy(&down.stdout);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(said.contains(&format!("(pid {pid}) through the sandbox stopped")), "{said}");
    assert!(said.contains("sandbox stopped"), "{said}");
    assert!(!alive(pid), "the tunnel process {pid} is still running");
    let after = xtask(&["tunnel", "status", "--json"]);
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(after["tunnels"], serde_json::json!([]), "{after}");
}

#[test]
fn fail_dev_sandbox_checks_only_and_manifest_before_starting_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let dev_sandbox = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(dir.path())
            .args(["dev", "--sandbox"])
            .args(args)
            .env("TMPDIR", dir.path())
            .env("XTASK_STATE_DIR", dir.path().join("state"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let sandboxes = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("mesh-sandbox-"))
            .count()
    };
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-services.toml");
    let builtin = std::path::Path::new(builtin).canonicalize().unwrap();

    let out = dev_sandbox(&["--only", "rest-apj"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: no service `rest-apj` in {} (did you mean `rest-api`?); the services are: \
             mcp-server, rest-api, worker\n",
            builtin.display()
        )
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sandbox:"));
    assert_eq!(sandboxes(), 0, "no sandbox may start for a bad --only");

    let out = dev_sandbox(&["--manifest", "/nonexistent.toml", "--only", "api"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: could not read the service manifest /nonexistent.toml: No such file or directory \
         (os error 2); check the path (the default is `services.toml` at the workspace root)\n"
    );
    assert_eq!(sandboxes(), 0, "no sandbox may start for a missing --manifest");

    let manifest = dir.path().join("mine.toml");
    std::fs::write(&manifest, "[services.api]\ncommand = [\"${XTASK_EXE}\", \"__standin\"]\n")
        .unwrap();
    let out = dev_sandbox(&["--manifest", "mine.toml", "--only", "worker"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: no service `worker` in {}; the services are: api\n", manifest.display())
    );
    assert_eq!(sandboxes(), 0);
}

#[test]
fn fail_dev_without_any_configuration_points_to_env_example() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.env"), "# nothing yet\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir.path())
        .args(["--env-file", "empty.env", "dev"])
        .env("XTASK_STATE_DIR", dir.path().join("state"))
        .env("NO_COLOR", "1")
        .env_remove("ELASTICACHE_ENDPOINT")
        .env_remove("REDIS_HOST")
        .env_remove("MESH_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: ELASTICACHE_ENDPOINT is not set, and Redis needs it: add \
         `ELASTICACHE_ENDPOINT=...` to .env (see .env.example for every variable), or export it\n"
    );
}

#[test]
fn fail_missing_key_file_exits_2_from_dev_with_or_without_checks_and_1_from_doctor() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("missing.pem");
    std::fs::write(
        dir.path().join("dev.env"),
        format!(
            "BASTION_HOST_IP=127.0.0.1\nBASTION_PORT={}\nBASTION_KEY_FILE={}\n\
             ELASTICACHE_ENDPOINT=cache.internal\nREDIS_TUNNEL_PORT={}\n",
            mesh_testkit::free_port(),
            key.display(),
            mesh_testkit::free_port()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("services.toml"),
        "[services.app]\ncommand = [\"sleep\", \"30\"]\ncwd = \".\"\n",
    )
    .unwrap();
    let xtask = |args: &[&str]| xtask_in(dir.path(), &[&["--env-file", "dev.env"], args].concat());
    let unreadable = format!(
        "cannot read the private key {}: No such file or directory (os error 2): check \
         BASTION_KEY_FILE\n",
        key.display()
    );

    let out = xtask(&["dev", "--manifest", "services.toml", "--skip-checks"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.ends_with(&format!("error: {unreadable}")), "{stderr}");

    let out = xtask(&["dev", "--manifest", "services.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");

    // The doctor reports rather than fails: its `[✗]` is exit 1, whatever the cause.
    let out = xtask(&["doctor", "--quick"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[✗] SSH key"), "{report}");
}

/// The command line of `pid`, its arguments space-separated.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn dev_sandbox_killed_outright_leaves_no_service_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, lines_rx, _reader) = common::spawn_dev_sandbox(tmp.path(), &[]);
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = { stderr }.read_to_string(&mut text);
        let _ = err_tx.send(text);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sandbox_dir = None;
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("dev --sandbox did not get ready within 60 s")
            });
        if let Some((_, dir)) = line.split_once("files in ") {
            sandbox_dir = Some(std::path::PathBuf::from(dir.trim()));
        }
        if line.starts_with("worker ready") {
            break;
        }
    }
    let env_file = sandbox_dir.expect("dev --sandbox names its directory").join("sandbox.env");
    let rest_port = env_value(&env_file, "REST_API_PORT");
    let everything = descendants(pid);
    let services: Vec<u32> =
        everything.iter().copied().filter(|&p| cmdline(p).contains(" __standin ")).collect();
    let reaper: Vec<u32> =
        everything.iter().copied().filter(|&p| cmdline(p).contains(" __reaper ")).collect();
    // Should the reaper fail, the stand-ins are not left to the next test run.
    struct Cleanup(Vec<u32>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
    let _cleanup = Cleanup(everything.clone());
    assert_eq!(services.len(), 3, "three stand-ins: {everything:?}");
    assert_eq!(reaper.len(), 1, "one reaper: {everything:?}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)
        .unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<(u32, String)> =
            everything.iter().filter(|&&p| alive(p)).map(|&p| (p, cmdline(p))).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "15 s after SIGKILL, still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The reaper held dev's stderr; it is closed now that every process is gone.
    let err = err_rx.recv_timeout(Duration::from_secs(5)).expect("dev's stderr closed");
    assert!(
        err.contains(
            "`cargo xtask dev` was killed before stopping its services: its reaper stopped 3 \
             process group(s), 0 of them with SIGKILL"
        ),
        "stderr:\n{err}"
    );
    let rest_api = format!("127.0.0.1:{rest_port}");
    assert!(std::net::TcpStream::connect(&rest_api).is_err(), "{rest_api} still answers");
}
