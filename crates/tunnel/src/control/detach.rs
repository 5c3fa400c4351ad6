//! A detached start: the tunnel re-executed in its own session, its output in
//! the log file, and the caller told only once every forward is verified.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use mesh_config::Secret;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{request, ControlError, Reply, Request, StateDir, StatusReply, LOG_ROTATE_BYTES};

/// How to run the tunnel in the background.
#[derive(Clone, Debug)]
pub struct DetachRequest {
    /// The binary, usually `std::env::current_exe()`.
    pub program: PathBuf,
    /// Its arguments: a foreground start of the same configuration.
    pub args: Vec<OsString>,
    /// Variables set for the child only (a passphrase read from the terminal
    /// goes here, never in `args`).
    pub env: Vec<(OsString, OsString)>,
    /// How long the child may take to verify every forward.
    pub wait: Duration,
}

/// Starts the tunnel in the background and waits until its control socket
/// answers `status` (it serves the socket only once every forward is
/// verified). When the child exits first, or `wait` runs out (the child is
/// then stopped), the error carries the tail of its log.
pub async fn start_detached(
    state: &StateDir,
    req: DetachRequest,
) -> Result<StatusReply, ControlError> {
    state.create()?;
    let log_offset = prepare_log(state)?;
    let log_err = |source| ControlError::Io { path: state.log_file.clone(), source };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&state.log_file)
        .map_err(log_err)?;
    let log2 = log.try_clone().map_err(log_err)?;

    let mut command = Command::new(&req.program);
    command.args(&req.args).envs(req.env.iter().map(|(k, v)| (k, v)));
    command.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours; it
    // detaches the child from our terminal, so closing it sends no SIGHUP.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let mut child = command
        .spawn()
        .map_err(|source| ControlError::Spawn { program: req.program.clone(), source })?;
    let pid = child.id();
    tracing::info!(pid, log = %state.log_file.display(), "tunnel process started in the background");

    let deadline = Instant::now() + req.wait;
    loop {
        if let Some(status) = child.try_wait().map_err(log_err)? {
            let reason = failure_reason(&read_from(state, log_offset));
            return Err(ControlError::ChildFailed { status, log: state.log_file.clone(), reason });
        }
        if let Ok(Reply::Status(status)) =
            request(&state.socket, Request::Status, Duration::from_secs(2)).await
        {
            if status.pid == pid {
                return Ok(status);
            }
        }
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            return Err(ControlError::StartTimeout {
                pid,
                waited_s: req.wait.as_secs(),
                log: state.log_file.clone(),
                log_tail: read_from(state, log_offset),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For a detached start with an encrypted key and no configured passphrase:
/// asks for it here, on the terminal the child will not have, so the caller
/// can hand it over in the child's environment (`BASTION_KEY_PASSPHRASE`,
/// readable only by this user, never in argv). `None` when nothing needs
/// asking or there is no terminal (the child then fails with the engine's
/// message naming the variable).
pub fn passphrase_for_child(
    key_file: Option<&Path>,
    configured: Option<&Secret>,
) -> Result<Option<Secret>, ControlError> {
    let Some(path) = key_file else { return Ok(None) };
    if configured.is_some() || !std::io::stdin().is_terminal() || !key_is_encrypted(path) {
        return Ok(None);
    }
    let prompt = format!("Enter passphrase for key '{}': ", path.display());
    let passphrase = rpassword::prompt_password(prompt)
        .map_err(|source| ControlError::Io { path: path.to_owned(), source })?;
    Ok(Some(Secret::new(passphrase)))
}

/// True when the key file at `path` is encrypted (OpenSSH or legacy PEM);
/// false when it is not or cannot be read (the engine then says why).
pub fn key_is_encrypted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return russh::keys::PrivateKey::from_openssh(&text).is_ok_and(|k| k.is_encrypted());
    }
    text.contains("ENCRYPTED")
}

/// Rotates a log past [`LOG_ROTATE_BYTES`] to `tunnel.log.1` and returns the
/// offset where this run's output will start.
fn prepare_log(state: &StateDir) -> Result<u64, ControlError> {
    let len = std::fs::metadata(&state.log_file).map(|m| m.len()).unwrap_or(0);
    if len <= LOG_ROTATE_BYTES {
        return Ok(len);
    }
    std::fs::rename(&state.log_file, state.log_file.with_extension("log.1"))
        .map_err(|source| ControlError::Io { path: state.log_file.clone(), source })?;
    Ok(0)
}

/// What the child said when it gave up: its `error:` lines (the CLI prints
/// a failure as `error: ...`), else the last lines of its output.
fn failure_reason(log: &str) -> String {
    let errors: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("error: ")).collect();
    if errors.is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        return lines[lines.len().saturating_sub(10)..].join("\n");
    }
    // Continuation lines of a multi-line error are indented under it.
    let start = log.lines().position(|l| l.starts_with("error: ")).unwrap_or(0);
    let mut text = Vec::new();
    for line in log.lines().skip(start) {
        match line.strip_prefix("error: ") {
            Some(rest) => text.push(rest.to_owned()),
            None if line.starts_with("       ") => text.push(line.trim_start().to_owned()),
            None => {}
        }
    }
    text.join("\n")
}

/// This run's part of the log (its last 40 lines), for an error message.
fn read_from(state: &StateDir, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(&state.log_file) {
        let _ = file.seek(SeekFrom::Start(offset));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_prefers_the_error_lines() {
        let log = "INFO connecting\nWARN refused\nerror: no route\n       to host\n";
        assert_eq!(failure_reason(log), "no route\nto host");
        assert_eq!(failure_reason("a\nb\n"), "a\nb");
    }

    #[test]
    fn encrypted_keys_are_told_apart_from_plain_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let keygen = |name: &str, passphrase: &str, pem: bool| {
            let path = tmp.path().join(name);
            let mut cmd = std::process::Command::new("ssh-keygen");
            cmd.args(["-q", "-t", "ecdsa", "-N", passphrase, "-f"]).arg(&path);
            if pem {
                cmd.args(["-m", "PEM"]);
            }
            let status = cmd.status().expect("ssh-keygen runs: apt-get install openssh-client");
            assert!(status.success());
            path
        };
        assert!(!key_is_encrypted(&keygen("plain", "", false)));
        assert!(key_is_encrypted(&keygen("openssh", "throwaway-test-pass", false)));
        assert!(key_is_encrypted(&keygen("pem", "throwaway-test-pass", true)));
        assert!(!key_is_encrypted(&tmp.path().join("missing")));
        // Without a terminal (as under `cargo test`) nothing is asked.
        assert!(passphrase_for_child(Some(&tmp.path().join("openssh")), None).unwrap().is_none());
    }

    #[tokio::test]
    async fn detached_child_that_exits_reports_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        std::fs::write(&state.log_file, "an earlier run\n").unwrap();
        let req = DetachRequest {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"WARN trying the key\"; echo \"error: bastion refused the key\" >&2; exit 3"
                    .into(),
            ],
            env: vec![],
            wait: Duration::from_secs(10),
        };
        match start_detached(&state, req).await.unwrap_err() {
            ControlError::ChildFailed { status, reason, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(reason, "bastion refused the key");
            }
            other => panic!("expected ChildFailed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn detached_child_that_never_verifies_is_stopped_at_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let state = crate::control::state::test_state(tmp.path());
        let req = DetachRequest {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo connecting; exec sleep 30".into()],
            env: vec![],
            wait: Duration::from_millis(500),
        };
        match start_detached(&state, req).await.unwrap_err() {
            ControlError::StartTimeout { pid, log_tail, .. } => {
                assert_eq!(log_tail, "connecting");
                // The child is gone (reaped): signalling it fails.
                assert!(
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
                );
            }
            other => panic!("expected StartTimeout, got {other:?}"),
        }
    }
}
