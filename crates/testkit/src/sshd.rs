//! A real OpenSSH `sshd` on a free loopback port (or inside a [`NetNs`]), with generated host
//! and user keys, an `authorized_keys` and a matching `known_hosts`, as root or any user.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{
    kill_by_env, log_len, log_since, run_checked, tail, wait_for_text, wait_ready, NotReady,
    Running,
};
use crate::{current_user, free_port, require, NetNs};

/// Set in every session's environment (to the server's temp dir) to find its processes.
const SESSION_MARKER: &str = "MESH_TESTKIT_SSHD";

/// The privilege-separation directory Debian's sshd wants when it runs as root.
const PRIVSEP_DIR: &str = "/run/sshd";

/// A kind of SSH key, as `ssh-keygen -t` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    Ecdsa,
    /// `ssh-rsa` key (2048 bits, to keep tests fast), signed with rsa-sha2-256/512.
    Rsa,
}

impl KeyType {
    /// All three kinds, the default set of host keys.
    pub const ALL: [KeyType; 3] = [KeyType::Ed25519, KeyType::Ecdsa, KeyType::Rsa];

    /// The `ssh-keygen -t` argument.
    pub fn keygen_name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Ecdsa => "ecdsa",
            KeyType::Rsa => "rsa",
        }
    }

    /// The key's type as written in public key lines and known_hosts.
    pub fn public_key_type(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::Ecdsa => "ecdsa-sha2-nistp256",
            KeyType::Rsa => "ssh-rsa",
        }
    }

    /// The host-key algorithm to ask for this key with (`ssh -o HostKeyAlgorithms=...`).
    pub fn host_key_algorithm(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa-sha2-512",
            other => other.public_key_type(),
        }
    }
}

/// The private key file format ssh-keygen writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`, the current default.
    #[default]
    OpenSsh,
    /// Legacy PEM (`-----BEGIN RSA/EC PRIVATE KEY-----`); ed25519 has none and stays OpenSSH.
    Pem,
}

/// A generated key: its private key file and its public line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// What kind of key this is.
    pub kind: KeyType,
    /// The private key file (mode 0600); the public one is next to it with `.pub`.
    pub private_path: PathBuf,
    /// `TYPE BASE64 COMMENT`, as in `authorized_keys`.
    pub public_line: String,
}

/// One of the server's host keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// What kind of key this is.
    pub kind: KeyType,
    /// `TYPE BASE64 COMMENT`, as in the `.pub` file.
    pub public_line: String,
    /// The private key file sshd loads.
    pub path: PathBuf,
}

/// Generates an unencrypted or passphrase-protected key in OpenSSH format in `dir`, under a
/// fresh name (`id_ed25519`, `id_ed25519_2`, ...).
pub fn generate_key(dir: &Path, kind: KeyType, passphrase: Option<&str>) -> KeyPair {
    generate_key_in_format(dir, kind, passphrase, KeyFormat::OpenSsh)
}

/// Like [`generate_key`], in the given private key format (legacy PEM for format tests).
pub fn generate_key_in_format(
    dir: &Path,
    kind: KeyType,
    passphrase: Option<&str>,
    format: KeyFormat,
) -> KeyPair {
    let base = format!("id_{}", kind.keygen_name());
    let path = (1..)
        .map(|n| if n == 1 { dir.join(&base) } else { dir.join(format!("{base}_{n}")) })
        .find(|candidate| !candidate.exists())
        .expect("an unused key file name");
    keygen(&path, kind, passphrase, format)
}

/// Runs ssh-keygen for one key at `path`. The passphrase goes through argv: acceptable only
/// because these keys are throwaway test keys.
fn keygen(path: &Path, kind: KeyType, passphrase: Option<&str>, format: KeyFormat) -> KeyPair {
    let mut command = Command::new(require("ssh-keygen"));
    command.args(["-q", "-t", kind.keygen_name(), "-C", "mesh-testkit", "-N"]);
    command.arg(passphrase.unwrap_or("")).arg("-f").arg(path).stdin(Stdio::null());
    if kind == KeyType::Rsa {
        command.args(["-b", "2048"]);
    }
    if format == KeyFormat::Pem {
        command.args(["-m", "PEM"]);
    }
    run_checked(
        &mut command,
        &format!("ssh-keygen -t {} for {}", kind.keygen_name(), path.display()),
    );
    let public =
        path.with_file_name(format!("{}.pub", path.file_name().unwrap().to_string_lossy()));
    let public_line = fs::read_to_string(&public)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", public.display()))
        .trim()
        .to_owned();
    KeyPair { kind, private_path: path.to_path_buf(), public_line }
}

/// How to start an [`Sshd`]; from [`Sshd::builder`].
pub struct SshdBuilder {
    host_key_types: Vec<KeyType>,
    user_key: KeyType,
    netns: Option<(NetNs, Ipv4Addr)>,
    extra_config: String,
}

impl SshdBuilder {
    /// Which host keys to generate and load (default: ed25519, ECDSA and RSA).
    pub fn host_key_types(mut self, kinds: &[KeyType]) -> Self {
        assert!(!kinds.is_empty(), "sshd needs at least one host key type");
        self.host_key_types = kinds.to_vec();
        self
    }

    /// The kind of the generated, authorized user key (default ed25519).
    pub fn user_key(mut self, kind: KeyType) -> Self {
        self.user_key = kind;
        self
    }

    /// Adds `sshd_config` lines, e.g. `MaxAuthTries 2`. They go before the testkit's defaults,
    /// so they win (sshd keeps a keyword's first value); from a `Match` line on, at the end.
    /// A `SetEnv` of your own replaces the testkit's, which makes sessions read `~/.bashrc`
    /// and lets a session's command outlive [`Sshd::stop`].
    pub fn extra_config(mut self, lines: &str) -> Self {
        self.extra_config.push_str(lines);
        self.extra_config.push('\n');
        self
    }

    /// Runs inside `netns`, listening on `addr` (reach it through a [`crate::Link`]); the
    /// known_hosts lines and [`Sshd::ssh_command`] then name `addr`. Root only.
    pub fn netns(mut self, netns: &NetNs, addr: Ipv4Addr) -> Self {
        self.netns = Some((netns.clone(), addr));
        self
    }

    /// Generates the keys, starts sshd and waits for its SSH banner; panics with its log on
    /// failure.
    pub fn start(self) -> Sshd {
        let binary = require("sshd");
        let dir = tempfile::Builder::new()
            .prefix("mesh-sshd-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for sshd: {err}"));
        let host_keys = self
            .host_key_types
            .iter()
            .map(|&kind| {
                let path = dir.path().join(format!("ssh_host_{}_key", kind.keygen_name()));
                let pair = keygen(&path, kind, None, KeyFormat::OpenSsh);
                HostKey { kind, public_line: pair.public_line, path }
            })
            .collect();
        let user_key = generate_key(dir.path(), self.user_key, None);
        let authorized_keys = dir.path().join("authorized_keys");
        write_private(&authorized_keys, &format!("{}\n", user_key.public_line));
        if nix::unistd::geteuid().is_root() {
            ensure_privsep_dir();
        }

        let host = self.netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |(_, addr)| *addr);
        let mut sshd = Sshd {
            process: None,
            host,
            netns: self.netns.map(|(netns, _)| netns),
            port: 0,
            user: current_user(),
            host_keys,
            user_key,
            known_hosts: dir.path().join("known_hosts"),
            authorized_keys,
            config: dir.path().join("sshd_config"),
            log: dir.path().join("sshd.log"),
            binary,
            extra_config: self.extra_config,
            dir,
        };

        // A free port can be taken by someone else before sshd binds it: retry on new ones.
        for attempt in 1.. {
            sshd.port = free_port();
            sshd.write_files();
            let log_from = log_len(&sshd.log);
            match sshd.spawn_and_wait() {
                Ok(()) => break,
                Err(_) if attempt < 3 && port_taken(&log_since(&sshd.log, log_from)) => continue,
                Err(failure) => sshd.fail(failure),
            }
        }
        sshd
    }
}

/// A running OpenSSH sshd, killed (with every session) and its directory removed on drop.
pub struct Sshd {
    /// The listener process and its sessions; `None` between [`Sshd::stop`] and [`Sshd::start`].
    process: Option<Running>,
    /// The address sshd listens on: 127.0.0.1, or the one given with [`SshdBuilder::netns`].
    host: Ipv4Addr,
    /// The namespace sshd runs in, if any; kept alive as long as the server.
    netns: Option<NetNs>,
    /// The port sshd listens on; kept across restarts.
    port: u16,
    /// The login name tests connect as: the user running the tests.
    user: String,
    /// Host keys loaded by sshd, in the order of the builder.
    host_keys: Vec<HostKey>,
    /// The generated user key, authorized from the start.
    user_key: KeyPair,
    /// `[HOST]:PORT TYPE KEY` for every host key.
    known_hosts: PathBuf,
    /// Read by sshd on every login, so [`Sshd::authorize`] works while it runs.
    authorized_keys: PathBuf,
    /// The generated sshd_config.
    config: PathBuf,
    /// sshd's debug log (`-E`), plus its stderr; appended across restarts.
    log: PathBuf,
    /// Absolute path of sshd (it refuses to re-exec otherwise).
    binary: PathBuf,
    /// The test's own sshd_config lines.
    extra_config: String,
    /// Holds everything above; removed on drop, after the processes are gone.
    dir: tempfile::TempDir,
}

impl Sshd {
    /// A builder with all three host key types and an ed25519 user key.
    pub fn builder() -> SshdBuilder {
        SshdBuilder {
            host_key_types: KeyType::ALL.to_vec(),
            user_key: KeyType::Ed25519,
            netns: None,
            extra_config: String::new(),
        }
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port()`, or the namespace address and port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// The address sshd listens on (127.0.0.1 unless it runs in a namespace).
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// Stops sshd and its sessions with SIGSTOP: TCP stays up but no SSH packet is answered,
    /// so a client's keepalives go unanswered. [`Sshd::thaw`] resumes them.
    pub fn freeze(&self) {
        if let Some(process) = &self.process {
            process.freeze();
        }
    }

    /// Resumes sshd and its sessions after [`Sshd::freeze`].
    pub fn thaw(&self) {
        if let Some(process) = &self.process {
            process.thaw();
        }
    }

    /// The user to log in as (the current user; root in CI).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host keys sshd serves.
    pub fn host_keys(&self) -> &[HostKey] {
        &self.host_keys
    }

    /// The generated user key, already in `authorized_keys`.
    pub fn user_key(&self) -> &KeyPair {
        &self.user_key
    }

    /// A known_hosts file listing every host key as `[127.0.0.1]:PORT TYPE KEY`.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The host key of `kind`, if the server has one.
    pub fn host_key(&self, kind: KeyType) -> Option<&HostKey> {
        self.host_keys.iter().find(|key| key.kind == kind)
    }

    /// Writes a known_hosts file naming only the host keys of `kinds`, in that order (for
    /// tests of a client that must offer the recorded algorithm first); returns its path.
    pub fn known_hosts_only(&self, kinds: &[KeyType]) -> PathBuf {
        let names: Vec<&str> = kinds.iter().map(|kind| kind.keygen_name()).collect();
        let path = self.dir.path().join(format!("known_hosts_{}", names.join("_")));
        let text: String = kinds
            .iter()
            .map(|&kind| {
                let key = self.host_key(kind).unwrap_or_else(|| {
                    panic!("sshd has no {kind:?} host key: add it with `.host_key_types(..)`")
                });
                format!("{}\n", self.known_hosts_line(&key.public_line))
            })
            .collect();
        write_private(&path, &text);
        path
    }

    /// Writes a copy of [`Sshd::known_hosts`] with hashed host names (`ssh-keygen -H`, as
    /// `HashKnownHosts yes` writes them); returns its path.
    pub fn known_hosts_hashed(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts_hashed");
        fs::copy(&self.known_hosts, &path)
            .unwrap_or_else(|err| panic!("cannot copy known_hosts to {}: {err}", path.display()));
        let mut command = Command::new(require("ssh-keygen"));
        command.arg("-H").arg("-f").arg(&path).stdin(Stdio::null());
        run_checked(&mut command, "ssh-keygen -H (hash known_hosts)");
        let _ = fs::remove_file(path.with_file_name("known_hosts_hashed.old"));
        path
    }

    /// The known_hosts line OpenSSH would write for `public_line` on this server's port.
    pub fn known_hosts_line(&self, public_line: &str) -> String {
        let mut fields = public_line.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        format!("[{}]:{} {kind} {key}", self.host, self.port)
    }

    /// Adds a public key line to `authorized_keys` (takes effect at the next login).
    pub fn authorize(&self, public_line: &str) {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.authorized_keys.display()));
        writeln!(file, "{}", public_line.trim())
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", self.authorized_keys.display()));
    }

    /// sshd's log so far (DEBUG level), across restarts.
    pub fn log(&self) -> String {
        log_since(&self.log, 0)
    }

    /// Waits up to `timeout` for `needle` to appear in the log (sshd writes some lines only
    /// after a client is gone); true when it did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for_text(|| self.log(), needle, timeout)
    }

    /// The process id of the listening sshd, or `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Running::pid)
    }

    /// The server's temp directory: keys, config, log; a place for a test's extra keys.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills sshd and every session it forked (SIGKILL, like a bastion going away).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            let strays = kill_by_env(SESSION_MARKER, &self.dir.path().to_string_lossy());
            tracing::debug!(port = self.port, strays, "sshd stopped");
        }
    }

    /// Starts sshd again on the same port with the same keys; panics on failure.
    pub fn start(&mut self) {
        self.stop();
        if let Err(failure) = self.spawn_and_wait() {
            self.fail(failure);
        }
    }

    /// An `ssh` command that logs in with the user key and checks the host against
    /// [`Sshd::known_hosts`]; append the remote command, e.g. `.arg("true")`.
    pub fn ssh_command(&self) -> Command {
        self.ssh_command_with(&self.user_key.private_path, &self.known_hosts)
    }

    /// An `ssh` command with another key and known_hosts file, ignoring `~/.ssh` and the agent.
    pub fn ssh_command_with(&self, key: &Path, known_hosts: &Path) -> Command {
        let mut command = Command::new(require("ssh"));
        command.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"]).arg(key);
        command.arg("-o").arg(format!("UserKnownHostsFile={}", known_hosts.display()));
        for option in [
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "ConnectTimeout=10",
        ] {
            command.args(["-o", option]);
        }
        command.arg(format!("{}@{}", self.user, self.host)).stdin(Stdio::null());
        command
    }

    fn write_files(&self) {
        let known_hosts: String = self
            .host_keys
            .iter()
            .map(|key| format!("{}\n", self.known_hosts_line(&key.public_line)))
            .collect();
        write_private(&self.known_hosts, &known_hosts);
        write_private(&self.config, &self.render_config());
    }

    fn render_config(&self) -> String {
        // sshd keeps the first value of a keyword, so the test's lines go first, except a
        // `Match` block, which must come last.
        let (before, matches) = split_at_match(&self.extra_config);
        let dir = self.dir.path();
        let mut text = String::from("# written by mesh-testkit\n");
        text.push_str(before);
        let _ = writeln!(text, "ListenAddress {}:{}", self.host, self.port);
        for key in &self.host_keys {
            let _ = writeln!(text, "HostKey {}", key.path.display());
        }
        let _ = writeln!(text, "AuthorizedKeysFile {}", self.authorized_keys.display());
        let _ = writeln!(text, "PidFile {}", dir.join("sshd.pid").display());
        text.push_str(
            "AddressFamily inet\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AllowTcpForwarding yes\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             UsePAM no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             MaxStartups 100\n\
             LogLevel DEBUG\n",
        );
        // Bash reads ~/.bashrc for a command run over ssh only as a top-level shell (SHLVL
        // below 2). A developer's rc (pyenv, conda) can take seconds, or a minute when a killed
        // session left its lock behind, so test sessions skip it. The marker finds session
        // commands that outlive their session, so that stop() can end them.
        let _ = writeln!(text, "SetEnv SHLVL=1 \"{SESSION_MARKER}={}\"", dir.display());
        text.push_str(matches);
        text
    }

    fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let log_from = log_len(&self.log);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.log.display()));
        let mut command = match &self.netns {
            Some(netns) => netns.command(&self.binary),
            None => Command::new(&self.binary),
        };
        command.arg("-D").arg("-f").arg(&self.config).arg("-E").arg(&self.log);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let mut process = Running::spawn(command)
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.binary.display()));

        // Inside a namespace the test may have no route yet: trust the log there.
        let (addr, outside, log_path) = (self.addr(), self.netns.is_none(), self.log.clone());
        let result = wait_ready(&mut process, || {
            if outside {
                read_banner(addr).is_some()
            } else {
                log_since(&log_path, log_from).contains("Server listening on")
            }
        });
        match &result {
            Ok(()) => tracing::debug!(port = self.port, pid = process.pid(), "sshd ready"),
            Err(_) => process.kill(),
        }
        self.process = result.is_ok().then_some(process);
        result
    }

    fn fail(&self, failure: NotReady) -> ! {
        panic!(
            "sshd on {} {failure}; config {}; last lines of its log:\n{}",
            self.addr(),
            self.config.display(),
            tail(&self.log(), 25)
        );
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("user", &self.user)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

/// Splits extra config into the lines before the first `Match` and the rest.
fn split_at_match(extra: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in extra.split_inclusive('\n') {
        if line.trim_start().to_ascii_lowercase().starts_with("match ") {
            return extra.split_at(offset);
        }
        offset += line.len();
    }
    (extra, "")
}

/// The server's identification line, once it is listening and answering.
fn read_banner(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("SSH-2.0-").then(|| line.trim_end().to_owned())
}

fn write_private(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// As root, sshd needs its privilege-separation directory; Debian creates it only at boot.
fn ensure_privsep_dir() {
    let dir = Path::new(PRIVSEP_DIR);
    if dir.is_dir() {
        return;
    }
    fs::create_dir_all(dir).unwrap_or_else(|err| panic!("cannot create {PRIVSEP_DIR}: {err}"));
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|err| panic!("cannot chmod 0755 {PRIVSEP_DIR}: {err}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_before_match_goes_first_and_match_block_last() {
        let extra = "MaxAuthTries 2\nMatch User nobody\n  AllowTcpForwarding no\n";
        assert_eq!(
            split_at_match(extra),
            ("MaxAuthTries 2\n", "Match User nobody\n  AllowTcpForwarding no\n")
        );
        assert_eq!(split_at_match("MaxAuthTries 2\n"), ("MaxAuthTries 2\n", ""));
    }
}
