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
