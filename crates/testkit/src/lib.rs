//! Test support: real `redis-server` and OpenSSH `sshd` on free loopback ports, torn down on drop.
//!
//! Every server runs from a private temporary directory (config, keys, certificates, log) and
//! is killed, waited for and its directory removed when the handle is dropped, also while a test
//! panics. The processes are also tied to the test process: if the test binary is killed
//! outright, the kernel kills them too (see [`process`]).
//!
//! A binary the tests need but that is missing is a test failure naming the install command
//! ([`require`]), never a silent pass.
//!
//! - [`RedisServer`]: `requirepass`, ACL users, TLS with a throwaway CA (TLS-only by default),
//!   cluster mode, `cli()` through `REDISCLI_AUTH`, stop/start on the same port, freeze/thaw.
//! - [`Sshd`]: ed25519/ECDSA/RSA host keys, a user key, `authorized_keys`, `known_hosts`
//!   (also one-type and hashed variants), stop/start with the same keys, freeze/thaw; runs
//!   as root (CI) or as the current user. Sessions skip `~/.bashrc` (`SetEnv SHLVL=1`).
//! - [`NetNs`] and [`Link`] (root only): a VPC shape where Redis is reachable only from the
//!   bastion's namespace, and a link that can be cut silently and restored.
//! - [`StateDir`]: the `XTASK_STATE_DIR` every test sets; [`free_port`]; [`generate_key`].
//!
//! ```no_run
//! use mesh_testkit::{RedisServer, Sshd, StateDir};
//!
//! let state = StateDir::new();
//! let redis = RedisServer::builder().password("s3cret").start();
//! let sshd = Sshd::builder().start();
//! assert_eq!(redis.cli(&["PING"]), "PONG");
//! // pass `state.path()` as XTASK_STATE_DIR, `sshd.known_hosts()` as the known_hosts file...
//! # let _ = (state, sshd);
//! ```

mod netns;
pub mod process;
mod redis;
mod sshd;
mod tls;

use std::collections::HashSet;
use std::env;
use std::ffi::OsString;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub use netns::{Link, NetNs};
pub use redis::{RedisBuilder, RedisServer, RedisTls};
pub use sshd::{
    generate_key, generate_key_in_format, HostKey, KeyFormat, KeyPair, KeyType, Sshd, SshdBuilder,
};

/// The variable that moves the tool's state root; tests always set it.
pub const STATE_DIR_ENV: &str = "XTASK_STATE_DIR";

/// Ports already handed out by this process, so two tests running at once never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1, never the same twice within one test process.
///
/// The port is free when returned; another process may still take it before the caller binds
/// it (the servers here retry on a fresh port when that happens).
pub fn free_port() -> u16 {
    free_port_where(|_| true)
}

/// A TCP port free on both 127.0.0.1 and ::1, for tests of `localhost` resolving to either.
///
/// Panics when the machine has no IPv6 loopback, naming the fix.
pub fn free_port_dual_stack() -> u16 {
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        panic!(
            "cannot bind [::1]: this machine has no IPv6 loopback; enable it with \
             `sysctl -w net.ipv6.conf.lo.disable_ipv6=0`"
        );
    }
    free_port_where(|port| TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok())
}

fn free_port_where(also_free: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("cannot bind 127.0.0.1:0 to find a free port: {err}"));
        let port = listener.local_addr().expect("a bound listener has an address").port();
        if !also_free(port) {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("found no free loopback port in 200 tries: is the ephemeral port range exhausted?");
}

/// The loopback address of `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The absolute path of `binary` from PATH, /usr/local/sbin, /usr/sbin or /sbin; panics with
/// the install command when it is missing.
pub fn require(binary: &str) -> PathBuf {
    locate(binary, env::var_os("PATH")).unwrap_or_else(|| panic!("{}", missing_message(binary)))
}

/// Directories searched after PATH: sshd lives in sbin, which a non-root PATH often lacks.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

fn locate(binary: &str, path_var: Option<OsString>) -> Option<PathBuf> {
    let from_path = path_var.map(|paths| env::split_paths(&paths).collect::<Vec<_>>());
    let dirs = from_path.unwrap_or_default().into_iter().chain(SBIN_DIRS.iter().map(PathBuf::from));
    dirs.map(|dir| dir.join(binary)).find(|candidate| is_executable(candidate)).map(|found| {
        // sshd refuses to run unless started by its absolute path.
        std::path::absolute(&found).unwrap_or(found)
    })
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The Debian package that provides `binary`, for the install hint.
fn package_of(binary: &str) -> Option<&'static str> {
    Some(match binary {
        "sshd" => "openssh-server",
        "ssh" | "ssh-keygen" | "ssh-agent" | "ssh-add" => "openssh-client",
        "redis-server" => "redis-server",
        "redis-cli" | "redis-benchmark" => "redis-tools",
        "openssl" => "openssl",
        "ip" => "iproute2",
        _ => return None,
    })
}

fn missing_message(binary: &str) -> String {
    match package_of(binary) {
        Some(package) => format!(
            "`{binary}` not found: install it with `apt-get install -y {package}` \
             (or run `cargo xtask ci`, which installs it as root)"
        ),
        None => format!(
            "`{binary}` not found on PATH or in /usr/local/sbin, /usr/sbin, /sbin: \
             install it with your package manager"
        ),
    }
}

/// A throwaway state root: pass [`StateDir::path`] as `XTASK_STATE_DIR` so a test never
/// touches a developer's real tunnel state. Removed on drop.
pub struct StateDir {
    /// The directory itself; short (under /tmp) so control sockets inside it fit in 108 bytes.
    dir: tempfile::TempDir,
}

impl StateDir {
    /// Creates an empty state root under the system temp directory.
    pub fn new() -> StateDir {
        let dir = tempfile::Builder::new()
            .prefix("mesh-state-")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temporary state directory: {err}"));
        StateDir { dir }
    }

    /// The directory to pass as `XTASK_STATE_DIR`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sets `XTASK_STATE_DIR` on a command about to run the code under test.
    pub fn apply<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command.env(STATE_DIR_ENV, self.path())
    }
}

impl Default for StateDir {
    fn default() -> Self {
        StateDir::new()
    }
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StateDir").field(&self.path()).finish()
    }
}

/// The current user's login name, as sshd will see it.
pub fn current_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => env::var("USER").unwrap_or_else(|_| {
            panic!("uid {uid} has no passwd entry and USER is unset: sshd cannot log it in")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sshd_names_the_debian_package_and_the_ci_command() {
        assert_eq!(
            missing_message("sshd"),
            "`sshd` not found: install it with `apt-get install -y openssh-server` \
             (or run `cargo xtask ci`, which installs it as root)"
        );
        assert_eq!(
            missing_message("redis-cli"),
            "`redis-cli` not found: install it with `apt-get install -y redis-tools` \
             (or run `cargo xtask ci`, which installs it as root)"
        );
    }

    #[test]
    fn locate_finds_nothing_for_an_unknown_binary() {
        assert_eq!(locate("mesh-testkit-no-such-binary", Some("/usr/bin:/bin".into())), None);
    }

    #[test]
    fn locate_searches_sbin_even_when_path_lacks_it() {
        let found = locate("sshd", Some(OsString::new())).expect("sshd installed in an sbin dir");
        assert!(found.is_absolute(), "{found:?} is not absolute");
    }

    #[test]
    #[should_panic(expected = "`mesh-testkit-no-such-binary` not found on PATH")]
    fn require_panics_when_the_binary_is_missing() {
        require("mesh-testkit-no-such-binary");
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
        TcpListener::bind(loopback(ports[0])).expect("a free port can be bound");
    }

    #[test]
    fn dual_stack_port_is_free_on_both_loopbacks() {
        let port = free_port_dual_stack();
        TcpListener::bind(loopback(port)).expect("free on 127.0.0.1");
        TcpListener::bind((Ipv6Addr::LOCALHOST, port)).expect("free on ::1");
    }

    #[test]
    fn state_dir_is_removed_on_drop() {
        let state = StateDir::new();
        let path = state.path().to_path_buf();
        let mut command = Command::new("true");
        state.apply(&mut command);
        let set = command.get_envs().find(|(key, _)| *key == STATE_DIR_ENV);
        assert_eq!(set.and_then(|(_, value)| value), Some(path.as_os_str()));
        drop(state);
        assert!(!path.exists(), "{path:?} still exists after drop");
    }
}
