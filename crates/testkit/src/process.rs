//! Server processes that cannot outlive their test: killed on drop, and by the kernel when the
//! test process dies.
//!
//! Each server runs in its own process group, so stopping it also ends the children it forked
//! (sshd's per-connection processes), which is what an outage test needs: every session dies.
//! Since a group of its own no longer gets the terminal's Ctrl+C, each server also asks the
//! kernel for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`). That signal follows the
//! *thread* that forked, not the process, so all servers are spawned from one thread that lives
//! as long as the test process.
//!
//! FIXME: a test process killed outright (SIGKILL, a CI timeout) runs no destructors, so the
//! servers die but their temp dirs (`/tmp/mesh-redis-*`, `/tmp/mesh-sshd-*`, a few KB each)
//! stay behind. Sweeping them at the next start would need a liveness marker per directory
//! that parallel test processes can trust; until then they cost only disk space.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getppid, Pid};

/// How long a server may take to become ready on a slow, shared CI machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

type SpawnRequest = (Command, Sender<io::Result<Child>>);

/// The spawner thread's inbox; the thread lives as long as the process.
static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();

/// A running server process (and its process group); killed and reaped on drop.
#[derive(Debug)]
pub struct Running {
    /// The group leader; its pid is also the group id.
    child: Child,
}

impl Running {
    /// Spawns `command` in a new process group, tied to the life of the test process.
    pub fn spawn(mut command: Command) -> io::Result<Running> {
        let test_pid = std::process::id();
        command.process_group(0);
        // SAFETY: the closure only makes two system calls (prctl, getppid) and allocates
        // nothing, which is what is allowed between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died between fork and prctl; then nobody would kill us.
                if getppid().as_raw() as u32 != test_pid {
                    return Err(Errno::ESRCH.into());
                }
                Ok(())
            });
        }

        let (reply_tx, reply_rx) = channel();
        let spawner = SPAWNER.get_or_init(start_spawner);
        spawner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| io::Error::other("the testkit spawner thread dropped the request"))??;
        Ok(Running { child })
    }

    /// The process id of the server (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process and its descendants with SIGSTOP (they hold their sockets but answer
    /// nothing) until [`Running::thaw`].
    pub fn freeze(&self) {
        freeze_tree(Pid::from_raw(self.child.id() as i32));
    }

    /// Resumes a tree stopped by [`Running::freeze`] with SIGCONT.
    pub fn thaw(&self) {
        // A stopped process cannot fork, so the tree found now is the one that was frozen.
        for pid in freeze_tree(Pid::from_raw(self.child.id() as i32)) {
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
        }
    }

    /// The exit status if the server has already exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process group and every descendant with `SIGKILL`, and reaps the leader.
    ///
    /// sshd's per-connection processes call `setsid()`, leaving the group, so the process tree
    /// is frozen with `SIGSTOP` (a stopped process cannot fork) and each member killed.
    pub fn kill(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let tree = freeze_tree(group);
        match killpg(group, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(pid = group.as_raw(), %err, "cannot kill server group"),
        }
        for pid in tree {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        if let Err(err) = self.child.wait() {
            tracing::warn!(pid = group.as_raw(), %err, "cannot reap server");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops `root` and all its descendants with `SIGSTOP`, until no new process appears, and
/// returns them all.
fn freeze_tree(root: Pid) -> Vec<Pid> {
    let mut frozen = vec![root];
    let _ = nix::sys::signal::kill(root, Signal::SIGSTOP);
    loop {
        let parents = parent_map();
        let before = frozen.len();
        let mut index = 0;
        while index < frozen.len() {
            let parent = frozen[index];
            for &(pid, ppid) in &parents {
                if ppid == parent && !frozen.contains(&pid) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGSTOP);
                    frozen.push(pid);
                }
            }
            index += 1;
        }
        if frozen.len() == before {
            return frozen;
        }
    }
}

/// Kills every process whose environment holds `key=value`, and returns how many: the
/// processes a server started that then left its tree (sshd leaves a session's command
/// running, reparented to init, when the client goes away). Each is stopped first, so none
/// forks past the scan.
pub fn kill_by_env(key: &str, value: &str) -> usize {
    let wanted = format!("{key}={value}").into_bytes();
    let mut marked: Vec<Pid> = Vec::new();
    loop {
        let found: Vec<Pid> =
            pids().filter(|pid| !marked.contains(pid) && has_env(*pid, &wanted)).collect();
        if found.is_empty() {
            break;
        }
        for &pid in &found {
            let _ = nix::sys::signal::kill(pid, Signal::SIGSTOP);
        }
        marked.extend(found);
    }
    for &pid in &marked {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    marked.len()
}

fn has_env(pid: Pid, wanted: &[u8]) -> bool {
    // Unreadable (another user's process, or gone): not one of ours.
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ.split(|&byte| byte == 0).any(|entry| entry == wanted)
}

/// Every process id, from /proc; ours is left out.
fn pids() -> impl Iterator<Item = Pid> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |&pid| pid != me)
        .map(Pid::from_raw)
}

/// Every process's (pid, parent pid), from /proc.
fn parent_map() -> Vec<(Pid, Pid)> {
    pids()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: read after the last ')'.
            let after_name = &stat[stat.rfind(')')? + 1..];
            let ppid = after_name.split_whitespace().nth(1)?.parse::<i32>().ok()?;
            Some((pid, Pid::from_raw(ppid)))
        })
        .collect()
}

fn start_spawner() -> Mutex<Sender<SpawnRequest>> {
    let (request_tx, request_rx) = channel::<SpawnRequest>();
    thread::Builder::new()
        .name("mesh-testkit-spawner".into())
        .spawn(move || {
            // The static sender is never dropped, so this loop runs until the process exits.
            for (mut command, reply_tx) in request_rx {
                let _ = reply_tx.send(command.spawn());
            }
        })
        .expect("cannot start the testkit spawner thread");
    Mutex::new(request_tx)
}

/// Why a server did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// The process exited with this status.
    Exited(ExitStatus),
    /// It was still not ready after [`START_TIMEOUT`].
    TimedOut,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited ({status})"),
            NotReady::TimedOut => write!(f, "was not ready after {}s", START_TIMEOUT.as_secs()),
        }
    }
}

/// Polls `ready` until it is true, the process exits, or [`START_TIMEOUT`] passes.
pub fn wait_ready(running: &mut Running, mut ready: impl FnMut() -> bool) -> Result<(), NotReady> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = running.exited() {
            return Err(NotReady::Exited(status));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NotReady::TimedOut);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `text` until it contains `needle` or `timeout` passes; true when it appeared.
pub fn wait_for_text(text: impl Fn() -> String, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if text().contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The text a log file gained after byte `from` (empty when it does not exist yet).
pub fn log_since(path: &Path, from: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (from as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The current length of a log file, so readiness checks only look at what a new start wrote.
pub fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a helper command to completion; panics with its stderr when it fails.
pub fn run_checked(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what} ({:?}): {err}", command.get_program()));
    if !output.status.success() {
        panic!(
            "{what} failed ({}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[test]
    fn dropping_a_running_process_kills_its_whole_group() {
        // The shell forks a grandchild-like background sleep in the same group.
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 60 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        let mut running = Running::spawn(command).expect("spawn sh");
        let mut line = String::new();
        let stdout = running.child.stdout.take().expect("piped stdout");
        io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line).expect("read pid");
        let sleeper: u32 = line.trim().parse().expect("sh printed a pid");
        let leader = running.pid();
        assert!(alive(sleeper));

        drop(running);

        assert!(!alive(leader), "group leader {leader} survived drop");
        // SIGKILL lands asynchronously; the orphan may then linger as a zombie until init
        // reaps it, which is fine: it no longer runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                break;
            }
            assert!(Instant::now() < deadline, "sleep {sleeper} still runs: {state}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn wait_ready_reports_an_early_exit() {
        let mut running = Running::spawn(Command::new("false")).expect("spawn false");
        match wait_ready(&mut running, || false) {
            Err(NotReady::Exited(status)) => assert_eq!(status.code(), Some(1)),
            other => panic!("expected an early exit, got {other:?}"),
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
