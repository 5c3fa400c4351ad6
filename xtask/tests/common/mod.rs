//! Helpers shared by the xtask CLI tests that watch the processes and files a
//! `dev --sandbox` run leaves (or must not leave) behind.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// `cargo xtask dev --sandbox ARGS` with its state and temp dirs in `tmp`: the
/// child, its stdout lines as they come, and every line once it has ended.
pub fn spawn_dev_sandbox(
    tmp: &Path,
    args: &[&str],
) -> (Child, mpsc::Receiver<String>, JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--sandbox"])
        .args(args)
        .env("TMPDIR", tmp)
        .env("XTASK_STATE_DIR", tmp.join("state"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    (child, lines_rx, reader)
}

/// Every process whose parent is `pid`, recursively.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after_name.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == parent {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// The value of `name` in a dotenv file the sandbox wrote (NAME=value lines).
pub fn env_value(file: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap();
    line.split_once('=').unwrap().1.trim_matches(|c| c == '"' || c == '\'').to_string()
}
