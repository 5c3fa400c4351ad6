//! A real `redis-server` on a free loopback port, password-protected, with no
//! persistence, living in the sandbox's directory; plain or TLS only; installed
//! with apt when missing and we run as root.

use crate::net::{free_loopback_port, random_token};
use crate::tls::TlsFiles;
use crate::{Result, SandboxError};
use mesh_config::Secret;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The command that installs `redis-server` (and `redis-cli`) on Debian and Ubuntu.
pub const REDIS_INSTALL_COMMAND: &str = "sudo apt-get install -y redis-server redis-tools";

/// How long redis-server gets to answer PING after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long redis-server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` child with `requirepass`, bound to 127.0.0.1 only. Dropping
/// it stops the server.
pub struct LocalRedis {
    /// The server process; `None` once stopped.
    child: Option<Child>,
    /// The loopback port it listens on.
    port: u16,
    /// The generated `requirepass`, kept out of argv (it is in the config file).
    password: Secret,
    /// The server's log file, quoted in errors.
    log: PathBuf,
    /// The certificates when the server speaks TLS only; `None` for plain text.
    tls: Option<TlsFiles>,
}

impl LocalRedis {
    /// Writes a config into `dir` and starts `redis-server` with it, returning
    /// once the server answers an authenticated PING.
    pub fn start(dir: &Path) -> Result<LocalRedis> {
        LocalRedis::start_with(dir, None)
    }

    /// Like [`LocalRedis::start`]; with `tls`, the server speaks TLS only, and
    /// is ready once it answers a PING over TLS verified as `tls.server_name`.
    pub fn start_with(dir: &Path, tls: Option<TlsFiles>) -> Result<LocalRedis> {
        let program = find_or_install_redis_server()?;
        let port = free_loopback_port()?;
        let password = Secret::new(random_token(32)?);
        let config = dir.join("redis.conf");
        let log = dir.join("redis.log");
        write_config(&config, dir, &log, port, &password, tls.as_ref())?;

        let mut command = Command::new(&program);
        command
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A sandbox killed with SIGKILL must not leave its Redis running: the kernel
        // stops it when the thread that started it (the sandbox's main thread) dies.
        #[cfg(target_os = "linux")]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .map_err(|source| SandboxError::Spawn { program: program.clone(), source })?;
        let mut redis = LocalRedis { child: Some(child), port, password, log, tls };
        redis.wait_ready()?;
        info!(port, pid = redis.pid(), tls = redis.tls.is_some(), "redis-server ready");
        Ok(redis)
    }

    /// The loopback port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `requirepass`.
    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// The certificates, when the server speaks TLS only.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The process id of the server, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server: SIGTERM, then SIGKILL if it has not exited in time.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                debug!(port = self.port, "redis-server stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(port = self.port, "redis-server ignored SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(SandboxError::RedisExited {
                        port: self.port,
                        status: status.to_string(),
                        log: self.log.clone(),
                        tail: log_tail(&self.log),
                    });
                }
            }
            let answered = match &self.tls {
                None => authenticated_ping(self.port, &self.password),
                Some(tls) => verified_tls_ping(self.port, &self.password, tls),
            };
            if answered {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                self.stop();
                return Err(SandboxError::RedisNotReady {
                    port: self.port,
                    waited_ms: started.elapsed().as_millis(),
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `redis-server` comes from, given the PATH and whether we are root.
#[derive(Debug, PartialEq, Eq)]
enum Locate {
    /// Installed at this path.
    Found(PathBuf),
    /// Missing, and we may install it: root, with apt-get on the PATH.
    InstallWithApt,
    /// Missing, and installing it is the user's job.
    Missing,
}

fn locate(path_var: Option<&std::ffi::OsStr>, root: bool) -> Locate {
    let cwd = std::env::temp_dir();
    let search = |program: &str| which::which_in(program, path_var, &cwd).ok();
    match search("redis-server") {
        Some(path) => Locate::Found(path),
        None if root && search("apt-get").is_some() => Locate::InstallWithApt,
        None => Locate::Missing,
    }
}

/// Finds `redis-server` on the PATH; when it is missing, installs it with apt
/// if we are root and apt is there, else says how to install it.
fn find_or_install_redis_server() -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH");
    let root = nix::unistd::geteuid().is_root();
    match locate(path_var.as_deref(), root) {
        Locate::Found(path) => return Ok(path),
        Locate::Missing => {
            return Err(SandboxError::RedisMissing { install: REDIS_INSTALL_COMMAND.to_string() })
        }
        Locate::InstallWithApt => {}
    }

    warn!("redis-server is missing; installing it with apt-get (running as root)");
    for args in [&["update"][..], &["install", "-y", "redis-server", "redis-tools"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|source| SandboxError::Spawn { program: "apt-get".into(), source })?;
        if !status.success() {
            return Err(SandboxError::RedisInstall { status: status.to_string() });
        }
    }
    match locate(path_var.as_deref(), root) {
        Locate::Found(path) => Ok(path),
        _ => Err(SandboxError::RedisMissing { install: REDIS_INSTALL_COMMAND.to_string() }),
    }
}

/// The server's config: loopback only, the password, nothing saved to disk;
/// with `tls`, no plain-text port at all. The file is private to its owner
/// because it holds the password.
fn write_config(
    path: &Path,
    dir: &Path,
    log: &Path,
    port: u16,
    password: &Secret,
    tls: Option<&TlsFiles>,
) -> Result<()> {
    let quoted = |path: &Path| format!("{:?}", path.display().to_string());
    let listen = match tls {
        None => format!("port {port}\n"),
        Some(tls) => format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients no\n",
            quoted(&tls.cert),
            quoted(&tls.key),
            quoted(&tls.ca_cert),
        ),
    };
    let text = format!(
        "bind 127.0.0.1\n{listen}protected-mode yes\nrequirepass {pw}\nsave \"\"\n\
         appendonly no\ndaemonize no\ndir {dir}\nlogfile {log}\nloglevel notice\n",
        pw = password.expose(),
        dir = quoted(dir),
        log = quoted(log),
    );
    crate::tls::private_file(path, text.as_bytes())
}

/// True when the server on `port` answers AUTH and PING.
pub(crate) fn authenticated_ping(port: u16, password: &Secret) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let pw = password.expose();
    let request = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n*1\r\n$4\r\nPING\r\n", pw.len());
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let expected = b"+OK\r\n+PONG\r\n";
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while reply.len() < expected.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply == expected
}

/// True when the TLS server on `port` answers AUTH and PING, its certificate
/// verified as the endpoint's name with the sandbox's CA.
pub(crate) fn verified_tls_ping(port: u16, password: &Secret, tls: &TlsFiles) -> bool {
    let target = mesh_probe::Target::new(tls.server_name.clone(), 6379)
        .via(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .password(password.clone())
        .tls(mesh_probe::TlsMode::Verify { ca_cert: Some(tls.ca_cert.clone()) })
        .timeout(Duration::from_secs(1));
    // The probe is async; a thread of its own keeps it off any caller's runtime.
    std::thread::scope(|scope| {
        let ping = scope.spawn(|| {
            mesh_probe::blocking(mesh_probe::ping(&target, &mesh_probe::NoTunnel)).is_ok()
        });
        ping.join().unwrap_or(false)
    })
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
    use std::os::unix::fs::PermissionsExt;

    /// A directory standing in for a PATH, holding executables with these names.
    fn path_with(programs: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for program in programs {
            let path = dir.path().join(program);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn missing_redis_server_is_installed_only_by_root_with_apt() {
        let with_apt = path_with(&["apt-get"]);
        let path = Some(with_apt.path().as_os_str());
        assert_eq!(locate(path, true), Locate::InstallWithApt);
        assert_eq!(locate(path, false), Locate::Missing);

        let bare = path_with(&[]);
        assert_eq!(locate(Some(bare.path().as_os_str()), true), Locate::Missing);

        let installed = path_with(&["redis-server", "apt-get"]);
        let found = locate(Some(installed.path().as_os_str()), true);
        assert_eq!(found, Locate::Found(installed.path().join("redis-server")));
    }

    #[test]
    fn missing_redis_server_error_gives_the_install_command() {
        let err = SandboxError::RedisMissing { install: REDIS_INSTALL_COMMAND.to_string() };
        assert_eq!(
            err.to_string(),
            "`redis-server` is not installed; install it with \
             `sudo apt-get install -y redis-server redis-tools` and retry"
        );
    }

    #[test]
    fn password_stays_out_of_argv_and_in_a_private_config() {
        let dir = tempfile::tempdir().unwrap();
        let redis = LocalRedis::start(dir.path()).unwrap();
        let pid = redis.pid().unwrap();

        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(!cmdline.contains(redis.password().expose()), "{cmdline}");
        let config = dir.path().join("redis.conf");
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(authenticated_ping(redis.port(), redis.password()));
        assert!(!authenticated_ping(redis.port(), &Secret::new("wrong")));
    }
}
