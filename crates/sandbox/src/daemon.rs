//! `sandbox up|down|status`: the bastion and Redis kept running by a detached
//! process, found again through a record under the state root.
//!
//! Layout of `<state root>/sandbox/`: `serve.log` (the detached process's
//! output), `sandbox.json` (written once it is up: pid, start time, ports, env
//! file) and `run/` (the sandbox's own temporary directory).

use crate::{Result, Sandbox, SandboxError, SandboxOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long `up` waits for the detached process (it may install redis-server).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `down` waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a background sandbox keeps its files.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    dir: PathBuf,
}

impl DaemonPaths {
    /// The paths under a state root (`XTASK_STATE_DIR` or the XDG state dir).
    pub fn under_state_root(state_root: &Path) -> DaemonPaths {
        DaemonPaths { dir: state_root.join("sandbox") }
    }

    /// The paths in exactly this directory (what `serve` is handed).
    pub fn in_dir(dir: impl Into<PathBuf>) -> DaemonPaths {
        DaemonPaths { dir: dir.into() }
    }

    /// The directory holding everything of the background sandbox.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The detached process's stdout and stderr.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    fn record(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

/// A background sandbox that is up, as its record describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The detached `serve` process.
    pub pid: u32,
    /// The env file to pass as `--env-file`.
    pub env_file: PathBuf,
    pub bastion_port: u16,
    pub redis_port: u16,
    /// The redis-server process (killed by `down` if `serve` had to be killed).
    pub redis_pid: u32,
    /// The endpoint name the bastion resolves to the local Redis.
    pub endpoint: String,
    /// The CA of Redis's certificate when Redis speaks TLS only; `None` for plain text.
    pub ca_cert: Option<PathBuf>,
}

/// Whether a background sandbox runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    NotRunning,
    Running(Running),
    /// A record is left, but its process is gone (killed, or the machine rebooted).
    Stale {
        pid: u32,
    },
}

/// What `up` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new background sandbox is up.
    New(Running),
    /// One was already running; it is left as it is.
    AlreadyRunning(Running),
}

/// Reads the record and checks its process is still the one that wrote it.
pub fn status(paths: &DaemonPaths) -> Status {
    let Some((running, start_time, _)) = read_record(&paths.record()) else {
        return Status::NotRunning;
    };
    if process_start_time(running.pid) == Some(start_time) {
        Status::Running(running)
    } else {
        Status::Stale { pid: running.pid }
    }
}

/// Starts `serve` (a command re-executing this binary as `sandbox serve`) in
/// its own session, detached, and waits until it has written its record.
pub fn start(paths: &DaemonPaths, mut serve: Command) -> Result<Started> {
    match status(paths) {
        Status::Running(running) => return Ok(Started::AlreadyRunning(running)),
        Status::Stale { pid } => {
            warn!(pid, dir = %paths.dir.display(), "removing a stale sandbox record");
            remove_dir(&paths.dir)?;
        }
        Status::NotRunning => {}
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
        .map_err(|err| SandboxError::io("create", &paths.dir, err))?;
    let log_path = paths.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|err| SandboxError::io("create", &log_path, err))?;
    let log_err = log.try_clone().map_err(|err| SandboxError::io("open", &log_path, err))?;

    serve.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // terminal and process group so Ctrl+C here does not reach it.
    unsafe {
        serve.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let program = PathBuf::from(serve.get_program());
    let mut child =
        serve.spawn().map_err(|source| SandboxError::Spawn { program: program.clone(), source })?;

    let started = Instant::now();
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(SandboxError::ServeExited {
                status: exit.to_string(),
                log: log_path.clone(),
                tail: log_tail(&log_path),
            });
        }
        if let Status::Running(running) = status(paths) {
            if running.pid == child.id() {
                info!(pid = running.pid, "background sandbox up");
                return Ok(Started::New(running));
            }
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::ServeTimeout {
                waited_s: started.elapsed().as_secs(),
                log: log_path,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `sandbox serve`: brings a sandbox up under `paths` (with Redis
/// TLS only when `tls`), writes the record, and runs until SIGTERM or SIGINT,
/// then removes everything but the log.
pub fn serve(paths: &DaemonPaths, tls: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| SandboxError::io("start a runtime in", &paths.dir, err))?;
    runtime.block_on(async {
        let mut term = signal(tokio::signal::unix::SignalKind::terminate(), paths)?;
        let mut int = signal(tokio::signal::unix::SignalKind::interrupt(), paths)?;
        let options =
            SandboxOptions { parent_dir: Some(paths.run_dir()), tls, ..Default::default() };
        let sandbox = Sandbox::up(options).await?;
        write_record(&paths.record(), &sandbox)?;
        println!("sandbox up; env file {}", sandbox.env_file().display());

        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        println!("sandbox stopping");
        let _ = std::fs::remove_file(paths.record());
        sandbox.shutdown().await
    })
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
    paths: &DaemonPaths,
) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .map_err(|err| SandboxError::io("install a signal handler for", &paths.dir, err))
}

/// Stops the background sandbox, if any, and removes its directory. Returns
/// the pid that was stopped.
pub fn stop(paths: &DaemonPaths) -> Result<Option<u32>> {
    let stopped = match status(paths) {
        Status::Running(running) => {
            terminate(running.pid);
            // If serve had to be killed, its redis-server was orphaned; the
            // start time makes sure the pid was not reused meanwhile.
            let redis_start = read_record(&paths.record()).map(|(_, _, redis_start)| redis_start);
            if redis_start.is_some() && process_start_time(running.redis_pid) == redis_start {
                let _ = kill(Pid::from_raw(running.redis_pid as i32), Signal::SIGKILL);
            }
            Some(running.pid)
        }
        Status::Stale { .. } | Status::NotRunning => None,
    };
    remove_dir(&paths.dir)?;
    Ok(stopped)
}

/// SIGTERM, a grace period, then SIGKILL.
fn terminate(pid: u32) {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if kill(target, None).is_err() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!(pid, "the sandbox ignored SIGTERM; killing it");
    let _ = kill(target, Signal::SIGKILL);
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(SandboxError::io("remove", dir, err)),
    }
}

fn write_record(path: &Path, sandbox: &Sandbox) -> Result<()> {
    let pid = std::process::id();
    let (bastion, redis) = (sandbox.bastion(), sandbox.redis());
    let record = serde_json::json!({
        "pid": pid,
        "start_time": process_start_time(pid),
        "env_file": sandbox.env_file(),
        "bastion_port": bastion.map(|b| b.port()),
        "redis_port": redis.map(|r| r.port()),
        "redis_pid": redis.and_then(|r| r.pid()),
        "redis_start_time": redis.and_then(|r| r.pid()).and_then(process_start_time),
        "endpoint": sandbox.endpoint(),
        "ca_cert": sandbox.ca_cert(),
    });
    // Written whole, then renamed: a reader never sees half a record.
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, record.to_string())
        .map_err(|err| SandboxError::io("write", &partial, err))?;
    std::fs::rename(&partial, path).map_err(|err| SandboxError::io("write", path, err))
}

/// The record, the start time of serve and that of its redis-server.
fn read_record(path: &Path) -> Option<(Running, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    let number = |key: &str| record[key].as_u64();
    let running = Running {
        pid: u32::try_from(number("pid")?).ok()?,
        env_file: PathBuf::from(record["env_file"].as_str()?),
        bastion_port: u16::try_from(number("bastion_port")?).ok()?,
        redis_port: u16::try_from(number("redis_port")?).ok()?,
        redis_pid: u32::try_from(number("redis_pid")?).ok()?,
        endpoint: record["endpoint"].as_str()?.to_string(),
        ca_cert: record["ca_cert"].as_str().map(PathBuf::from),
    };
    Some((running, number("start_time")?, number("redis_start_time")?))
}

/// The process's start time in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process even after pid reuse.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow `)`.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|at| stat[at + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// The last lines of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_start_time_is_read_and_a_missing_process_has_none() {
        let ours = process_start_time(std::process::id());
        assert!(ours.is_some_and(|ticks| ticks > 0), "{ours:?}");
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn a_record_whose_process_is_gone_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DaemonPaths::in_dir(dir.path());
        assert_eq!(status(&paths), Status::NotRunning);

        let record = serde_json::json!({
            "pid": std::process::id(), "start_time": 1, "env_file": "/x/sandbox.env",
            "bastion_port": 1, "redis_port": 2, "redis_pid": 3, "redis_start_time": 1,
            "endpoint": "e",
        });
        std::fs::write(paths.record(), record.to_string()).unwrap();
        assert_eq!(status(&paths), Status::Stale { pid: std::process::id() });
    }
}
