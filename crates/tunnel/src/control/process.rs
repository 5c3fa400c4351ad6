//! Stopping a tunnel: over its control socket, else by its recorded pid once
//! the process is proven ours, and cleaning what a crashed run left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{request, ControlError, Reply, Request, StateDir, TunnelOwner};

/// How `stop` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// No tunnel ran; `cleaned` lists the stale files removed (a crashed run's
    /// pid file or socket), empty when there were none.
    NotRunning { cleaned: Vec<PathBuf> },
    /// The tunnel with this pid is gone.
    Stopped { pid: Option<u32>, via: StopVia },
}

/// Which way a running tunnel was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopVia {
    /// A `stop` request on the control socket: a graceful shutdown.
    ControlSocket,
    /// SIGTERM to the recorded pid, because the control socket did not do it.
    Sigterm(SignalReason),
    /// SIGKILL after SIGTERM went unanswered for the grace period.
    Sigkill,
}

/// Why a tunnel was signalled instead of stopped over its control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalReason {
    /// The socket was missing, refused the connection or was silent.
    NoAnswer,
    /// The socket answered `stopped` but the process still ran after the grace period.
    NotExited,
    /// The socket answered something other than `stopped`.
    UnexpectedReply,
}

/// Stops the tunnel of `state`: a `stop` on the control socket first; when it
/// does not answer, SIGTERM to the recorded pid after checking the process
/// runs our binary (`exes`: the binaries a tunnel of ours may run), SIGKILL
/// after `grace`. A pid file nobody locks is stale: it is removed and no
/// process is signalled, whoever has that pid now. A tunnel `dev` runs is
/// never stopped nor signalled ([`ControlError::OwnedByDev`]): `dev` would
/// run on without it, or stop every service on the signal.
pub async fn stop(
    state: &StateDir,
    exes: &[PathBuf],
    grace: Duration,
) -> Result<StopOutcome, ControlError> {
    if !state.is_locked()? {
        let cleaned = state.remove_stale()?;
        if !cleaned.is_empty() {
            tracing::info!(id = %state.id, ?cleaned, "removed stale tunnel state");
        }
        return Ok(StopOutcome::NotRunning { cleaned });
    }

    let pid = state.read_pid()?;
    if let Some(record) = state.running_record().filter(|r| r.owner == TunnelOwner::Dev) {
        return Err(ControlError::OwnedByDev { id: state.id.clone(), pid: record.pid });
    }
    let reason = match request(&state.socket, Request::Stop, grace).await {
        Ok(Reply::Stopped { pid: stopped }) => {
            if wait_unlocked(state, grace).await? {
                wait_exited(stopped, grace).await;
                return Ok(StopOutcome::Stopped {
                    pid: Some(stopped),
                    via: StopVia::ControlSocket,
                });
            }
            tracing::warn!(id = %state.id, pid = stopped, "stopped over the control socket but still running");
            SignalReason::NotExited
        }
        Ok(Reply::Error { message }) => {
            return Err(ControlError::StopRefused { path: state.socket.clone(), message });
        }
        Ok(reply) => {
            tracing::warn!(id = %state.id, ?reply, "unexpected reply to stop on the control socket");
            SignalReason::UnexpectedReply
        }
        Err(error) => {
            tracing::info!(id = %state.id, %error, "control socket unavailable, using the pid");
            SignalReason::NoAnswer
        }
    };

    let Some(pid) = pid else {
        // Locked but no pid yet: a start in its first instant. Wait for it.
        return Err(ControlError::BadPidFile { path: state.pid_file.clone(), text: String::new() });
    };
    if let Err(exe) = is_ours(pid, exes) {
        return Err(ControlError::NotOurProcess { pid, exe, pid_file: state.pid_file.clone() });
    }
    let via = terminate(state, pid, grace, reason).await?;
    state.remove_stale()?;
    Ok(StopOutcome::Stopped { pid: Some(pid), via })
}

/// SIGTERM, then SIGKILL after `grace`; done when the pid file's lock is free
/// (the kernel releases it as the process exits, zombie or not).
async fn terminate(
    state: &StateDir,
    pid: u32,
    grace: Duration,
    reason: SignalReason,
) -> Result<StopVia, ControlError> {
    let target = Pid::from_raw(pid as i32);
    tracing::info!(pid, "sending SIGTERM");
    if kill(target, Signal::SIGTERM).is_err() || wait_unlocked(state, grace).await? {
        wait_exited(pid, grace).await;
        return Ok(StopVia::Sigterm(reason));
    }
    tracing::warn!(pid, grace_s = grace.as_secs(), "no exit after SIGTERM, sending SIGKILL");
    let _ = kill(target, Signal::SIGKILL);
    if wait_unlocked(state, Duration::from_secs(5)).await? {
        wait_exited(pid, Duration::from_secs(5)).await;
        Ok(StopVia::Sigkill)
    } else {
        Err(ControlError::Unkillable { pid })
    }
}

/// Polls until no process holds the pid file's lock; false on timeout.
async fn wait_unlocked(state: &StateDir, timeout: Duration) -> Result<bool, ControlError> {
    let deadline = Instant::now() + timeout;
    loop {
        if !state.is_locked()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `pid` has exited: the lock is released while the process
/// still unwinds, and a caller of `stop` expects no process left. A zombie
/// counts as exited (it holds no port, file or socket). Gives up silently
/// after `timeout`.
async fn wait_exited(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while is_running(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True while `pid` exists and is not a zombie.
fn is_running(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Checks that `pid` runs one of `exes` (compared after resolving symlinks; a
/// binary replaced by a rebuild still counts). On failure gives what the
/// process runs instead, for the message.
pub fn is_ours(pid: u32, exes: &[PathBuf]) -> Result<(), String> {
    let running =
        running_exe(pid).ok_or_else(|| "an unknown program (cannot read it)".to_owned())?;
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if exes.iter().any(|exe| canonical(exe) == running || *exe == running) {
        Ok(())
    } else {
        Err(running.display().to_string())
    }
}

/// The binary a process runs: `/proc/PID/exe` on Linux (minus the
/// ` (deleted)` the kernel appends once a rebuild replaced the file), else
/// the command `ps` reports.
fn running_exe(pid: u32) -> Option<PathBuf> {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(path) => {
            let text = path.to_string_lossy();
            Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text)))
        }
        Err(_) if Path::new("/proc/self/exe").exists() => None,
        // FIXME: without /proc (macOS) `ps -o comm=` gives the path the
        // process was started with, which may be relative; a tunnel started
        // through a relative path is then not recognized and must be stopped
        // over its control socket or by hand.
        Err(_) => {
            let out = std::process::Command::new("ps")
                .args(["-o", "comm=", "-p", &pid.to_string()])
                .output()
                .ok()?;
            let comm = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (!comm.is_empty()).then(|| PathBuf::from(comm))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// A process that is not ours, killed when the test ends.
    struct Sleeper(Child);

    impl Sleeper {
        fn start() -> Self {
            Sleeper(Command::new("sleep").arg("300").spawn().expect("`sleep` runs (coreutils)"))
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
        fn is_alive(&mut self) -> bool {
            self.0.try_wait().unwrap().is_none()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn our_exes() -> Vec<PathBuf> {
        vec![std::env::current_exe().unwrap()]
    }

    #[tokio::test]
    async fn stale_pid_file_is_cleaned_without_signalling_its_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        let mut sleeper = Sleeper::start();
        std::fs::write(&state.pid_file, format!("{}\n", sleeper.pid())).unwrap();
        std::fs::write(&state.socket, b"").unwrap();

        let outcome = stop(&state, &our_exes(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            outcome,
            StopOutcome::NotRunning { cleaned: vec![state.socket.clone(), state.pid_file.clone()] }
        );
        assert!(sleeper.is_alive());
        assert!(!state.pid_file.exists() && !state.socket.exists());

        let again = stop(&state, &our_exes(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(again, StopOutcome::NotRunning { cleaned: vec![] });
    }

    #[tokio::test]
    async fn locked_pid_file_naming_another_program_is_refused_not_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        let _lock = state.lock().unwrap();
        let mut sleeper = Sleeper::start();
        // The lock is held (by this test) but the pid names `sleep`, and the
        // control socket does not exist.
        std::fs::write(&state.pid_file, format!("{}\n", sleeper.pid())).unwrap();

        let err = stop(&state, &our_exes(), Duration::from_millis(200)).await.unwrap_err();
        match &err {
            ControlError::NotOurProcess { pid, exe, .. } => {
                assert_eq!(*pid, sleeper.pid());
                assert!(exe.ends_with("/sleep"), "{exe}");
            }
            other => panic!("expected NotOurProcess, got {other:?}"),
        }
        assert!(err.to_string().contains("not signalling it"));
        assert!(sleeper.is_alive());
    }

    #[tokio::test]
    async fn process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        // A stand-in that ignores SIGTERM, as a hung tunnel would.
        let mut child = stand_in(&state, true);

        let exes = [PathBuf::from("/bin/sleep"), PathBuf::from("/usr/bin/sleep")];
        let outcome = stop(&state, &exes, Duration::from_millis(300)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Stopped { pid: Some(child.id()), via: StopVia::Sigkill });
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        assert!(!state.pid_file.exists());
    }

    /// A stand-in tunnel process: holds the pid file's lock, wrote its pid
    /// there, and exits on SIGTERM (it is `sleep`) unless `ignore_term`.
    fn stand_in(state: &StateDir, ignore_term: bool) -> Child {
        let trap = if ignore_term { r#"trap "" TERM; "# } else { "" };
        let script =
            format!(r#"{trap}exec 9<>"$1"; flock -n 9 || exit 9; echo $$ >&9; exec sleep 30"#);
        let child = Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(&state.pid_file)
            .spawn()
            .expect("sh and flock (util-linux) run");
        let deadline = Instant::now() + Duration::from_secs(5);
        while state.read_pid().unwrap() != Some(child.id()) || !state.is_locked().unwrap() {
            assert!(Instant::now() < deadline, "the stand-in never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    #[tokio::test]
    async fn socket_that_answers_stopped_without_exiting_is_not_called_silent() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        let mut child = stand_in(&state, false);
        // A control socket that says `stopped` while the process runs on.
        let listener = tokio::net::UnixListener::bind(&state.socket).unwrap();
        let reply = format!("{{\"reply\":\"stopped\",\"pid\":{}}}\n", child.id());
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            tokio::io::BufReader::new(read).read_line(&mut line).await.unwrap();
            write.write_all(reply.as_bytes()).await.unwrap();
        });

        let exes = [PathBuf::from("/bin/sleep"), PathBuf::from("/usr/bin/sleep")];
        let outcome = stop(&state, &exes, Duration::from_millis(300)).await.unwrap();
        assert_eq!(
            outcome,
            StopOutcome::Stopped {
                pid: Some(child.id()),
                via: StopVia::Sigterm(SignalReason::NotExited)
            }
        );
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15));
    }

    #[tokio::test]
    async fn tunnel_owned_by_dev_is_refused_without_a_stop_request_or_a_signal() {
        use crate::control::{
            serve_control, ControlTarget, HealthReply, TunnelOwner, TunnelRecord,
        };
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        struct Counting(AtomicUsize);
        impl ControlTarget for Counting {
            async fn status(&self) -> serde_json::Value {
                serde_json::json!({ "state": "up" })
            }
            async fn health(&self) -> HealthReply {
                HealthReply { ok: true, latency_ms: None, detail: "PONG".into() }
            }
            async fn shutdown(&self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }

        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        let record = TunnelRecord {
            id: state.id.to_string(),
            bastion_host: "b".into(),
            bastion_port: 22,
            bastion_user: "u".into(),
            forwards: vec![],
            bind_addrs: vec![],
            socket: state.socket.clone(),
            pid: std::process::id(),
            started_at: 0,
            exe: None,
            owner: TunnelOwner::Dev,
            detached: false,
        };
        let target = Arc::new(Counting(AtomicUsize::new(0)));
        let _guard = serve_control(target.clone(), state.lock().unwrap(), record).await.unwrap();

        // Our own binary as the tunnel's: a regression would SIGTERM this test.
        let err = stop(&state, &our_exes(), Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "tunnel {} belongs to `cargo xtask dev` (pid {}): stop dev with Ctrl+C there",
                state.id,
                std::process::id()
            )
        );
        assert_eq!(target.0.load(Ordering::SeqCst), 0, "no stop request was sent");
        assert!(state.is_locked().unwrap());
    }

    #[test]
    fn is_ours_recognizes_our_binary_only() {
        assert_eq!(is_ours(std::process::id(), &our_exes()), Ok(()));
        let sleeper = Sleeper::start();
        assert!(is_ours(sleeper.pid(), &our_exes()).is_err());
    }
}
