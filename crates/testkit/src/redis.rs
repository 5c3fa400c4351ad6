//! A real `redis-server` on a free loopback port (or inside a [`NetNs`]): password, ACL users,
//! TLS, cluster mode, stop, restart and freeze.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mesh_config::Secret;

use crate::process::{log_len, log_since, tail, wait_for_text, wait_ready, NotReady, Running};
use crate::{free_port, require, tls, NetNs};

/// The line redis-server logs once it serves clients.
const READY_LINE: &str = "Ready to accept connections";

/// How to start a [`RedisServer`]; from [`RedisServer::builder`].
#[derive(Default)]
pub struct RedisBuilder {
    password: Option<Secret>,
    acl_users: Vec<(String, Secret)>,
    tls_name: Option<String>,
    plain_port_too: bool,
    cluster: bool,
    netns: Option<(NetNs, Ipv4Addr)>,
    extra_config: String,
}

impl RedisBuilder {
    /// Requires this password for the default user (`requirepass`, written to the config file).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(Secret::new(password));
        self
    }

    /// Adds an ACL user with every permission (`user NAME on >PASS ~* &* +@all`).
    pub fn acl_user(mut self, user: &str, password: &str) -> Self {
        self.acl_users.push((user.to_owned(), Secret::new(password)));
        self
    }

    /// Serves TLS only, with a fresh CA and a certificate for `dns_name`; the plain port is off
    /// (as on ElastiCache with encryption in transit) unless [`Self::plain_port_too`] is set.
    pub fn tls(mut self, dns_name: &str) -> Self {
        self.tls_name = Some(dns_name.to_owned());
        self
    }

    /// With TLS, also serves plain RESP on [`RedisServer::plain_port`].
    pub fn plain_port_too(mut self) -> Self {
        self.plain_port_too = true;
        self
    }

    /// Runs in cluster mode with all 16384 slots on this one node, so `CLUSTER SLOTS` answers
    /// and keys never move; add `cluster-announce-ip 10.0.0.9` through
    /// [`Self::extra_config`] to make it name an address a tunnel cannot reach. Starting
    /// takes about 2 s more: redis holds a new master at `cluster_state:fail` that long.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Runs inside `netns`, bound to `addr` (and the namespace's 127.0.0.1), with protected mode
    /// off; [`RedisServer::cli`] runs inside the namespace too. Root only.
    pub fn netns(mut self, netns: &NetNs, addr: Ipv4Addr) -> Self {
        self.netns = Some((netns.clone(), addr));
        self
    }

    /// Appends raw `redis.conf` lines (a later line wins in redis.conf), e.g. `user bob on ...`.
    pub fn extra_config(mut self, lines: &str) -> Self {
        self.extra_config.push_str(lines);
        self.extra_config.push('\n');
        self
    }

    /// Starts the server and waits until it accepts connections; panics with the log on failure.
    pub fn start(self) -> RedisServer {
        let binary = require("redis-server");
        let dir = tempfile::Builder::new()
            .prefix("mesh-redis-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for redis-server: {err}"));
        let tls = self.tls_name.as_deref().map(|name| {
            let files = tls::generate(dir.path(), name);
            RedisTls {
                ca_cert: files.ca_cert,
                server_name: name.to_owned(),
                cert: files.cert,
                key: files.key,
            }
        });
        let host = self.netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |(_, addr)| *addr);
        let mut server = RedisServer {
            process: None,
            host,
            port: 0,
            plain_port: None,
            password: self.password.clone(),
            tls,
            binary,
            config: dir.path().join("redis.conf"),
            log: dir.path().join("redis.log"),
            settings: self,
            dir,
        };

        // A free port can be taken by someone else before redis binds it: retry on new ones.
        for attempt in 1.. {
            server.pick_ports();
            server.write_config();
            let log_from = log_len(&server.log);
            match server.spawn_and_wait() {
                Ok(()) => break,
                Err(_) if attempt < 3 && port_taken(&log_since(&server.log, log_from)) => continue,
                Err(failure) => server.fail(failure),
            }
        }
        if server.settings.cluster {
            server.assign_all_slots();
        }
        server
    }
}

/// TLS material of a [`RedisServer`] started with [`RedisBuilder::tls`].
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// PEM file of the test CA that signed the server certificate.
    pub ca_cert: PathBuf,
    /// The DNS name in the certificate (the only name it is valid for; no IP address).
    pub server_name: String,
    /// PEM server certificate.
    pub cert: PathBuf,
    /// PEM server private key.
    pub key: PathBuf,
}

/// A running `redis-server`, killed and its directory removed on drop.
pub struct RedisServer {
    /// The server process; `None` between [`RedisServer::stop`] and [`RedisServer::start`].
    process: Option<Running>,
    /// The address it binds: 127.0.0.1, or the one given with [`RedisBuilder::netns`].
    host: Ipv4Addr,
    /// The port clients use: the TLS port when TLS is on, else the plain one.
    port: u16,
    /// The plain port when TLS is on and [`RedisBuilder::plain_port_too`] was asked for.
    plain_port: Option<u16>,
    /// The default user's password, if any.
    password: Option<Secret>,
    /// Certificates, when TLS is on.
    tls: Option<RedisTls>,
    /// Absolute path of redis-server.
    binary: PathBuf,
    /// The config file (0600; it holds the passwords).
    config: PathBuf,
    /// Server log, also its stdout and stderr; appended across restarts.
    log: PathBuf,
    /// What the test asked for, to rewrite the config on a new port.
    settings: RedisBuilder,
    /// Holds everything above; removed on drop, after the process is gone.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A builder for a server with no password, no TLS and no ACL user.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// The port clients use (the TLS port when TLS is on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port()`, or the namespace address and port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// Stops the server with SIGSTOP: connections stay open but nothing answers (a hung
    /// endpoint). [`RedisServer::thaw`] resumes it.
    pub fn freeze(&self) {
        if let Some(process) = &self.process {
            process.freeze();
        }
    }

    /// Resumes a server stopped by [`RedisServer::freeze`].
    pub fn thaw(&self) {
        if let Some(process) = &self.process {
            process.thaw();
        }
    }

    /// The plain-RESP port next to TLS, when [`RedisBuilder::plain_port_too`] was set.
    pub fn plain_port(&self) -> Option<u16> {
        self.plain_port
    }

    /// The default user's password (`requirepass`), if one was set.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// CA, server name and certificate paths, when TLS is on.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    /// The process id, or `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Running::pid)
    }

    /// The server's temp directory (config, log, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server logged so far, across restarts.
    pub fn log_text(&self) -> String {
        log_since(&self.log, 0)
    }

    /// Kills the server (SIGKILL, like a crash or an outage); the port stays reserved for us.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
            tracing::debug!(port = self.port, "redis-server stopped");
        }
    }

    /// Starts the server again on the same port with the same config; panics on failure.
    pub fn start(&mut self) {
        self.stop();
        if let Err(failure) = self.spawn_and_wait() {
            self.fail(failure);
        }
    }

    /// A `redis-cli` command aimed at this server: host, port, TLS flags, and the password
    /// through `REDISCLI_AUTH` (never `-a`, which would show it in `ps`).
    pub fn cli_command(&self) -> Command {
        let mut command = self.command_for(require("redis-cli"));
        command.args(["-h", &self.host.to_string(), "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca_cert).arg("--sni");
            command.arg(&tls.server_name);
        }
        match &self.password {
            Some(password) => command.env("REDISCLI_AUTH", password.expose()),
            None => command.env_remove("REDISCLI_AUTH"),
        };
        command.stdin(Stdio::null());
        command
    }

    /// Runs `redis-cli ARGS` as the default user; returns stdout, then any stderr, trimmed.
    /// Panics when redis-cli exits non-zero (e.g. the server is down).
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(self.cli_command().args(args), args)
    }

    /// Runs `redis-cli --user USER ARGS` with `password` through `REDISCLI_AUTH`.
    pub fn cli_as(&self, user: &str, password: &str, args: &[&str]) -> String {
        let mut command = self.cli_command();
        command.args(["--user", user]).env("REDISCLI_AUTH", password).args(args);
        run_cli(&mut command, args)
    }

    /// Waits up to `timeout` for `needle` to appear in the log; true when it did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for_text(|| self.log_text(), needle, timeout)
    }

    /// Gives this node every slot and waits for `cluster_state:ok`; the slots are kept in
    /// nodes.conf, so a restart needs no second call.
    fn assign_all_slots(&self) {
        let reply = self.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        assert_eq!(reply, "OK", "CLUSTER ADDSLOTSRANGE on {} failed", self.addr());
        let ready = wait_for_text(
            || self.cli(&["CLUSTER", "INFO"]),
            "cluster_state:ok",
            crate::process::START_TIMEOUT,
        );
        assert!(ready, "redis cluster on {} never reached cluster_state:ok", self.addr());
    }

    /// A command for `program`, inside the server's namespace when it has one.
    fn command_for(&self, program: PathBuf) -> Command {
        match &self.settings.netns {
            Some((netns, _)) => netns.command(program),
            None => Command::new(program),
        }
    }

    fn pick_ports(&mut self) {
        let (tls, plain_too) = (self.tls.is_some(), self.settings.plain_port_too);
        self.port = free_port();
        self.plain_port = (tls && plain_too).then(free_port);
    }

    fn write_config(&self) {
        let text = render_config(self);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.config)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", self.config.display()));
        std::io::Write::write_all(&mut file, text.as_bytes())
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", self.config.display()));
    }

    fn spawn_and_wait(&mut self) -> Result<(), NotReady> {
        let log_from = log_len(&self.log);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.log.display()));
        let stderr = log.try_clone().expect("duplicate the log file handle");
        let mut command = self.command_for(self.binary.clone());
        command.arg(&self.config).stdin(Stdio::null()).stdout(log).stderr(stderr);
        let mut process = Running::spawn(command)
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.binary.display()));

        // Inside a namespace the test may have no route to the server: trust its log alone.
        let (log_path, addr, outside) =
            (self.log.clone(), self.addr(), self.settings.netns.is_none());
        let result = wait_ready(&mut process, || {
            log_since(&log_path, log_from).contains(READY_LINE)
                && (!outside || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        match &result {
            Ok(()) => tracing::debug!(port = self.port, pid = process.pid(), "redis-server ready"),
            Err(_) => process.kill(),
        }
        self.process = result.is_ok().then_some(process);
        result
    }

    fn fail(&self, failure: NotReady) -> ! {
        panic!(
            "redis-server on {} {failure}; config {}; last lines of its log:\n{}",
            self.addr(),
            self.config.display(),
            tail(&self.log_text(), 25)
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("password", &self.password)
            .field("tls", &self.tls.as_ref().map(|tls| &tls.server_name))
            .finish()
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

fn run_cli(command: &mut Command, args: &[&str]) -> String {
    let output: Output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run redis-cli {}: {err}", args.join(" ")));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!("redis-cli {} failed ({}): {}{}", args.join(" "), output.status, stdout, stderr);
    }
    let mut text = stdout.trim().to_owned();
    if !stderr.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr.trim());
    }
    text
}

/// The redis.conf for `server`'s current ports; secrets only ever go here, never in argv.
fn render_config(server: &RedisServer) -> String {
    let dir = server.dir.path();
    let mut text = String::from("# written by mesh-testkit\n");
    let plain = match (&server.tls, server.plain_port) {
        (None, _) => server.port,
        (Some(_), Some(plain)) => plain,
        (Some(_), None) => 0,
    };
    if server.host.is_loopback() {
        let _ = writeln!(text, "bind 127.0.0.1\nport {plain}\nprotected-mode yes");
    } else {
        // Our own namespace: clients come from the bastion's address, not loopback.
        let _ = writeln!(text, "bind {} 127.0.0.1\nport {plain}\nprotected-mode no", server.host);
    }
    let _ = writeln!(text, "daemonize no\nsave \"\"\nappendonly no\nloglevel notice");
    let _ = writeln!(text, "dir {}", quote(&dir.to_string_lossy()));
    if let Some(tls) = &server.tls {
        let _ = writeln!(text, "tls-port {}", server.port);
        let _ = writeln!(text, "tls-cert-file {}", quote(&tls.cert.to_string_lossy()));
        let _ = writeln!(text, "tls-key-file {}", quote(&tls.key.to_string_lossy()));
        let _ = writeln!(text, "tls-ca-cert-file {}", quote(&tls.ca_cert.to_string_lossy()));
        let _ = writeln!(text, "tls-auth-clients no");
    }
    if server.settings.cluster {
        let _ = writeln!(text, "cluster-enabled yes");
        let _ = writeln!(
            text,
            "cluster-config-file {}",
            quote(&dir.join("nodes.conf").to_string_lossy())
        );
    }
    if let Some(password) = &server.password {
        let _ = writeln!(text, "requirepass {}", quote(password.expose()));
    }
    for (user, password) in &server.settings.acl_users {
        let rule = format!(">{}", password.expose());
        let _ = writeln!(text, "user {} on {} ~* &* +@all", quote(user), quote(&rule));
    }
    text.push_str(&server.settings.extra_config);
    text
}

/// A double-quoted redis.conf argument (redis parses `\\`, `\"` and `\n` inside quotes).
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for ch in value.chars() {
        match ch {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            _ => quoted.push(ch),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn quote_escapes_what_redis_conf_unescapes() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote("x\ny"), r#""x\ny""#);
    }

    #[test]
    fn config_file_is_private_and_holds_the_password_not_argv() {
        let server = RedisServer::builder().password("pa ss\"word").start();
        let meta = fs::metadata(&server.config).expect("config exists");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
        let cmdline = fs::read(format!("/proc/{}/cmdline", server.pid().unwrap())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("pa ss"), "password in argv");
        assert_eq!(server.cli(&["PING"]), "PONG");
    }
}
