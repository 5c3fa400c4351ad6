//! `dev --sandbox` interrupted while it starts: the start-up is abandoned and nothing it
//! started stays behind (its own binary: a sandbox here must not race another for ports).

use std::time::{Duration, Instant};

mod common;
use common::{alive, descendants};

fn sandbox_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("mesh-sandbox-"))
        .map(|e| e.path())
        .collect()
}

#[test]
fn ctrl_c_while_the_sandbox_starts_leaves_no_directory_or_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _lines, reader) = common::spawn_dev_sandbox(tmp.path(), &[]);
    let pid = child.id();
    // The sandbox's directory is the first thing it creates: interrupt right then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox_dirs(tmp.path()).is_empty() {
        assert!(Instant::now() < deadline, "no sandbox directory within 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = descendants(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGINT)
        .unwrap();

    let status = child.wait().unwrap();
    let out = reader.join().unwrap().join("\n");
    // Abandoned (130) if the signal came before the services ran; an ordered stop (0) if
    // they were already up. Killed by the signal, it would have no code.
    match status.code() {
        Some(130) => assert!(out.contains("Ctrl+C: start-up abandoned"), "{out}"),
        Some(0) => {}
        other => panic!("dev ended with {other:?} ({status}): {out}"),
    }
    assert_eq!(sandbox_dirs(tmp.path()), Vec::<std::path::PathBuf>::new(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "still running: {:?}", started);
        std::thread::sleep(Duration::from_millis(20));
    }
}
