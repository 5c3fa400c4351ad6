//! `cargo xtask dev` refusing to start, through the built binary: what the
//! user sees when the platform checkout is missing.

use std::process::Command;

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
fn doctor_with_the_sandbox_env_file_checks_its_bastion_and_redis_and_skips_aws() {
    let dir = tempfile::tempdir().unwrap();
    let xtask = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(dir.path())
            .args(args)
            .env("XTASK_STATE_DIR", dir.path().join("state"))
            .env("HOME", dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let up = xtask(&["sandbox", "up", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let json: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let env_file = json["env_file"].as_str().unwrap().to_string();

    let doctor = xtask(&["--env-file", &env_file, "doctor"]);
    let down = xtask(&["sandbox", "down"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(0), "{report}");
    assert!(report.contains("[-] AWS"), "{report}");
    assert!(report.contains("[✓] Bastion"), "{report}");
    assert!(report.contains("[✓] Redis"), "{report}");
    assert!(down.status.success());
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
    let xtask = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(dir.path())
            .arg("--env-file")
            .arg("dev.env")
            .args(args)
            .env("XTASK_STATE_DIR", dir.path().join("state"))
            .env("HOME", dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
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
