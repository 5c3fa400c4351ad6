//! Helpers shared by the xtask CLI tests that watch the processes and files a
//! `dev --sandbox` run leaves (or must not leave) behind.

use std::path::Path;

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
