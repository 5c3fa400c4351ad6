//! The reaper: a helper process that outlives the supervisor only to stop the
//! services it leaves behind when it dies without stopping them (SIGKILL, the
//! OOM killer, a closed terminal that took only the supervisor).
//!
//! The supervisor spawns it once, in a session of its own, and talks to it
//! through its stdin, one line per message:
//!
//! | line | meaning |
//! |---|---|
//! | `PGID SIGNAL` | a service's process group was created; SIGNAL (a number, optional, SIGTERM when absent) is its stop signal |
//! | `-PGID` | that group is gone (stopped and reaped) |
//! | `done` | the supervisor ended cleanly; nothing is to be signalled |
//!
//! End of input without `done` means the supervisor died, whatever killed it:
//! the kernel closes the pipe for it. The reaper then sends its stop signal to
//! every group it still knows, waits up to the grace period, SIGKILLs what is left
//! and exits. It signals nothing it was not told about, and never group 0, 1,
//! its own or its parent's.

use crate::process::{group_alive, signal_group, POLL};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{getpgid, getpgrp, getpid, getppid, setsid};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the reaper waits for the kernel to finish off a group after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long a clean end waits for the reaper to exit after `done`.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What a reaper did before exiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// The supervisor ended cleanly (`done`): nothing was signalled.
    Done,
    /// The supervisor died: `stopped` are the groups that were still alive and
    /// got SIGTERM; `killed`, those of them that also needed SIGKILL.
    Orphans { stopped: Vec<i32>, killed: Vec<i32> },
}

/// The body of the reaper process (xtask's hidden `__reaper`): leaves the
/// terminal's session, ignores SIGINT and SIGHUP (Ctrl+C and a closed
/// terminal are the supervisor's to handle, in order), reads its stdin until
/// `done` or its end, then returns what it did.
pub fn run(grace: Duration) -> Reaped {
    // Fails only when already a group leader (the supervisor's spawn did it).
    let _ = setsid();
    ignore_terminal_signals();
    reap(std::io::stdin().lock(), grace)
}

/// Reads the protocol from `input` and, at its end without `done`, stops
/// every group still known: SIGTERM, up to `grace`, then SIGKILL.
pub fn reap(input: impl BufRead, grace: Duration) -> Reaped {
    let mut forbidden = vec![getpid().as_raw(), getpgrp().as_raw()];
    forbidden.extend(getpgid(Some(getppid())).ok().map(|p| p.as_raw()));
    let mut groups = BTreeMap::new();
    // A read error is treated as the end: the supervisor is gone either way.
    for line in input.lines().map_while(Result::ok) {
        match parse(&line, &forbidden) {
            Some(Message::Created(pgid, stop)) => {
                groups.insert(pgid, stop);
            }
            Some(Message::Gone(pgid)) => {
                groups.remove(&pgid);
            }
            Some(Message::Done) => return Reaped::Done,
            None => tracing::warn!(line = %line.escape_debug(), "reaper ignores this line"),
        }
    }
    tracing::warn!(groups = groups.len(), "supervisor died, stopping the groups it left");
    terminate(groups, grace)
}

/// One line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Created(i32, Signal),
    Gone(i32),
    Done,
}

/// The message a line carries; None for anything else, including a group id
/// that is never ours to signal (0, 1, negative, or one of `forbidden`).
fn parse(line: &str, forbidden: &[i32]) -> Option<Message> {
    let line = line.trim();
    if line == "done" {
        return Some(Message::Done);
    }
    let (line, stop) = match line.split_once(' ') {
        Some((pgid, number)) => (pgid, Some(number.trim())),
        None => (line, None),
    };
    let stop = match stop {
        None => Signal::SIGTERM,
        Some(number) => Signal::try_from(number.parse::<i32>().ok()?).ok()?,
    };
    let (gone, digits) = match line.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pgid: i32 = digits.parse().ok().filter(|p| *p > 1 && !forbidden.contains(p))?;
    Some(if gone { Message::Gone(pgid) } else { Message::Created(pgid, stop) })
}

/// Its stop signal to each group, up to `grace` for them to go, SIGKILL to the
/// rest. A group seen gone is dropped at once, so a group id the kernel hands
/// out again later is never signalled.
fn terminate(groups: BTreeMap<i32, Signal>, grace: Duration) -> Reaped {
    let stopped: Vec<i32> = groups
        .into_iter()
        .filter(|&(pgid, stop)| signal_group(pgid, stop))
        .map(|(pgid, _)| pgid)
        .collect();
    let mut alive: Vec<i32> = stopped.clone();
    let deadline = Instant::now() + grace;
    loop {
        alive.retain(|&pgid| group_alive(pgid));
        if alive.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    let killed = alive.clone();
    let deadline = Instant::now() + KILL_WAIT;
    while !alive.is_empty() && Instant::now() < deadline {
        alive.retain(|&pgid| signal_group(pgid, Signal::SIGKILL) && group_alive(pgid));
        std::thread::sleep(POLL);
    }
    for pgid in alive {
        tracing::error!(pgid, "process group still alive after SIGKILL");
    }
    Reaped::Orphans { stopped, killed }
}

fn ignore_terminal_signals() {
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: installing SIG_IGN runs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// The supervisor's end of a running reaper: its stdin and the process.
pub(crate) struct ReaperPipe {
    child: Child,
    /// None once a write failed (the reaper died): the run goes on without it.
    stdin: Option<ChildStdin>,
}

impl ReaperPipe {
    /// Spawns `command` with the grace in milliseconds appended as its last
    /// argument, in a new session with SIGINT and SIGHUP ignored from its first
    /// instruction, its stdin a pipe and its stdout discarded.
    pub(crate) fn spawn(mut command: Command, grace: Duration) -> std::io::Result<ReaperPipe> {
        command.arg(grace.as_millis().to_string()).stdin(Stdio::piped()).stdout(Stdio::null());
        // SAFETY: setsid and signal are async-signal-safe, as a pre_exec hook requires.
        unsafe {
            command.pre_exec(|| {
                setsid().map_err(std::io::Error::from)?;
                for sig in [Signal::SIGINT, Signal::SIGHUP] {
                    signal(sig, SigHandler::SigIgn).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        tracing::debug!(pid = child.id(), "reaper started");
        Ok(ReaperPipe { child, stdin })
    }

    /// A service's group was created; `stop` is the service's stop signal.
    pub(crate) fn created(&mut self, pgid: i32, stop: Signal) {
        self.send(&format!("{pgid} {}\n", stop as i32));
    }

    /// A service's group is gone.
    pub(crate) fn gone(&mut self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    fn send(&mut self, line: &str) {
        let Some(stdin) = &mut self.stdin else { return };
        // One short line is one write below PIPE_BUF: atomic, and the reader
        // keeps the pipe drained, so this does not block.
        if let Err(error) = stdin.write_all(line.as_bytes()) {
            tracing::warn!(pid = self.child.id(), %error, "reaper gone, services are not watched");
            self.stdin = None;
        }
    }

    /// A clean end: `done`, the pipe closed, and the reaper waited for (bounded).
    pub(crate) async fn finish(mut self) {
        self.send("done\n");
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(pid = self.child.id(), %error, "could not wait for the reaper");
                    return;
                }
            }
        }
        tracing::warn!(pid = self.child.id(), "reaper still running after done, killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_group_ids_and_done_only() {
        let forbidden = [4242, 77];
        assert_eq!(parse("123", &forbidden), Some(Message::Created(123, Signal::SIGTERM)));
        assert_eq!(parse("123 2", &forbidden), Some(Message::Created(123, Signal::SIGINT)));
        assert_eq!(parse("-123", &forbidden), Some(Message::Gone(123)));
        assert_eq!(parse(" 9 ", &forbidden), Some(Message::Created(9, Signal::SIGTERM)));
        assert_eq!(parse("done", &forbidden), Some(Message::Done));
        for refused in [
            "0",
            "1",
            "-1",
            "-0",
            "4242",
            "-77",
            "--5",
            "+5",
            "",
            "-",
            "x1",
            "99999999999",
            "5 0",
            "5 99",
            "5 x",
        ] {
            assert_eq!(parse(refused, &forbidden), None, "{refused:?}");
        }
    }

    #[test]
    fn reap_after_done_signals_nothing_even_with_groups_known() {
        let input = std::io::Cursor::new("123456\n654321\ndone\n");
        assert_eq!(reap(input, Duration::from_millis(10)), Reaped::Done);
    }

    #[test]
    fn reap_without_done_skips_groups_that_are_gone() {
        // Above any pid_max: no such groups exist, so there is nothing to stop.
        let input = std::io::Cursor::new("2147483646\n2147483645\n-2147483646\n");
        let reaped = reap(input, Duration::from_millis(10));
        assert_eq!(reaped, Reaped::Orphans { stopped: vec![], killed: vec![] });
    }

    #[test]
    fn reap_sends_each_group_its_own_stop_signal() {
        use std::os::unix::process::CommandExt;
        // Ignores SIGTERM, exits on SIGINT: only its own stop signal ends it before the grace.
        let mut service = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; trap 'exit 0' INT; while :; do sleep 0.05; done"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = service.id() as i32;
        std::thread::sleep(Duration::from_millis(200)); // the traps are set
        let input = std::io::Cursor::new(format!("{pgid} {}\n", Signal::SIGINT as i32));
        let reaped = reap(input, Duration::from_secs(20));
        let _ = service.wait();
        assert_eq!(reaped, Reaped::Orphans { stopped: vec![pgid], killed: vec![] });
    }
}
