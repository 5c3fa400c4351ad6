//! Process groups: each service runs as the leader of its own group, so a
//! signal reaches everything it started (`go run` and the binary it builds).
//!
//! FIXME: a process that leaves its group (`setsid`, a self-daemonizing
//! server) is out of `killpg`'s reach and survives the stop (and the reaper's
//! cleanup below). Dev servers
//! rarely do this; when one does, the next run's free-port check names the
//! port it still holds.
//!
//! When this process itself dies without stopping them (SIGKILL, the OOM
//! killer), the groups would be orphaned: the reaper (`crate::reaper`), a
//! helper process told each group's id, stops them. `PR_SET_PDEATHSIG` is no
//! cure: it fires when the spawning *thread* exits (tokio's threads come and
//! go) and reaches only the direct child, not `go run`'s binary.
//!
//! FIXME: a group created in the instant between its spawn and the line that
//! tells the reaper about it, or any group when no reaper could be started, is
//! still orphaned by a SIGKILL; the next run's free-port check names the port
//! it holds.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use tokio::sync::watch;

/// How often a stopping group is checked for members still alive.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// How long to wait for the kernel to finish off a group after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Sends `signal` to every process of the group; false when the group is gone.
pub(crate) fn signal_group(pgid: i32, signal: Signal) -> bool {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(error) => {
            tracing::warn!(pgid, %signal, %error, "signalling a process group failed");
            true
        }
    }
}

/// Whether any process of the group is alive. Zombies do not count: they have
/// exited, and in a container whose init never reaps, orphans stay zombies.
#[cfg(target_os = "linux")]
pub(crate) fn group_alive(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces, so parse after the last ')'.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
        fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            && !matches!(fields.first(), Some(&"Z") | Some(&"X"))
    })
}

/// Whether any process of the group is alive (including unreaped zombies
/// here: without /proc, the kernel's answer is all there is).
#[cfg(not(target_os = "linux"))]
pub(crate) fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None) != Err(Errno::ESRCH)
}

/// How a group ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every process left within the grace period.
    InGrace,
    /// SIGKILL was needed (grace ran out or the stop was escalated).
    Killed,
}

/// Sends `signal` to the group, waits up to `grace` for all of it to exit (or
/// until `escalate` turns true), then SIGKILLs whatever is left and waits for
/// it to go. The leader must be reaped concurrently by its owner.
pub(crate) async fn terminate_group(
    pgid: i32,
    signal: Signal,
    grace: Duration,
    mut escalate: watch::Receiver<bool>,
) -> Ended {
    if !signal_group(pgid, signal) || !group_alive(pgid) {
        return Ended::InGrace;
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {
                if !group_alive(pgid) {
                    return Ended::InGrace;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = escalate.wait_for(|e| *e) => break,
        }
    }
    kill_group(pgid).await;
    Ended::Killed
}

/// SIGKILLs the group and waits (bounded) until none of it is alive.
pub(crate) async fn kill_group(pgid: i32) {
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    while signal_group(pgid, Signal::SIGKILL) && group_alive(pgid) {
        if tokio::time::Instant::now() > deadline {
            tracing::error!(pgid, "process group still alive after SIGKILL");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
