//! Shared test support: required binaries, polling, raw HTTP and Redis
//! clients, and an OpenSSH `ssh -N -L` forward through the sandbox bastion.

#![allow(dead_code)] // each test file uses a different part

use mesh_config::Secret;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `program`, or a panic naming the command that installs it.
pub fn require_binary(program: &str, install: &str) -> std::path::PathBuf {
    which::which(program)
        .unwrap_or_else(|_| panic!("`{program}` is not installed; install it with `{install}`"))
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn is_listening(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// True while a process with this id exists (a zombie counts as gone to us
/// only once reaped, so callers wait on their children first).
pub fn process_exists(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// A one-shot HTTP/1.1 request; returns the status code and the body.
pub fn http(method: &str, port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body =
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A Redis connection to 127.0.0.1:`port`, authenticated with the password.
pub fn redis_connection(port: u16, password: &Secret) -> mesh_probe::resp::Client {
    let timeout = Duration::from_secs(5);
    let mut client = mesh_probe::resp::Client::connect("127.0.0.1", port, timeout).unwrap();
    client.auth(None, password).unwrap();
    client
}

/// AUTH then PING over a raw socket to 127.0.0.1:`port`; the replies as text.
pub fn auth_ping(port: u16, password: &Secret) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let pw = password.expose();
    let request = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n*1\r\n$4\r\nPING\r\n", pw.len());
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while reply.len() < b"+OK\r\n+PONG\r\n".len() {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// An OpenSSH client holding `-L local_port:target` through the bastion; killed
/// on drop.
pub struct SshForward {
    pub child: Child,
    pub local_port: u16,
}

impl SshForward {
    /// Forwards a free local port to `target`.
    pub fn start(bastion_port: u16, key: &Path, known_hosts: &Path, target: &str) -> SshForward {
        let local_port = mesh_sandbox::free_loopback_port().unwrap();
        SshForward::start_on(local_port, bastion_port, key, known_hosts, target)
    }

    /// Forwards 127.0.0.1:`local_port` to `target`.
    pub fn start_on(
        local_port: u16,
        bastion_port: u16,
        key: &Path,
        known_hosts: &Path,
        target: &str,
    ) -> SshForward {
        let ssh = require_binary("ssh", "apt-get install -y openssh-client");
        let child = Command::new(ssh)
            .args(openssh_options(bastion_port, key, known_hosts))
            .arg("-N")
            .arg("-L")
            .arg(format!("127.0.0.1:{local_port}:{target}"))
            .arg("ec2-user@127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh starts");
        let mut forward = SshForward { child, local_port };
        wait_for("the ssh -L listener", Duration::from_secs(10), || {
            if let Ok(Some(status)) = forward.child.try_wait() {
                let mut stderr = String::new();
                let _ = forward.child.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("ssh exited early ({status}): {stderr}");
            }
            is_listening(local_port).then_some(())
        });
        forward
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SshForward {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options that make `ssh` strict and non-interactive against our bastion.
pub fn openssh_options(bastion_port: u16, key: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "IdentityAgent=none".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ExitOnForwardFailure=yes".into(),
        "-o".into(),
        "ConnectTimeout=5".into(),
        "-p".into(),
        bastion_port.to_string(),
    ]
}
