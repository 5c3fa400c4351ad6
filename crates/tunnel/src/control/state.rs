//! Where a tunnel keeps its state: the per-user root, one private directory per
//! configuration, and the files in it (pid, log, record, control socket).

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_config::Forward;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::ControlError;

/// The product's name, used for the state and runtime subdirectories.
pub const PRODUCT_DIR: &str = "mesh-dev";

/// The longest Unix socket path the kernel accepts (`sun_path` is 108 bytes on
/// Linux, 104 on macOS, both including the terminating NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// The per-user root under which every tunnel configuration has its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRoot {
    /// Holds one subdirectory per configuration (pid file, log, record).
    pub dir: PathBuf,
    /// Where control sockets go when set (`$XDG_RUNTIME_DIR/mesh-dev`): a short,
    /// private, per-login path; `None` puts each socket in its state directory.
    pub runtime_dir: Option<PathBuf>,
}

impl StateRoot {
    /// Resolves the root from the process environment (see [`StateRoot::resolve`]).
    pub fn from_env() -> Result<Self, ControlError> {
        Self::resolve(|name| std::env::var_os(name))
    }

    /// Resolves the root from variables looked up through `var`:
    /// `XTASK_STATE_DIR`, else `$XDG_STATE_HOME/mesh-dev`, else
    /// `~/.local/state/mesh-dev`. Sockets go under `$XDG_RUNTIME_DIR/mesh-dev`
    /// unless `XTASK_STATE_DIR` is set: an override keeps everything (sockets
    /// too) inside it, so a test never meets a developer's real tunnel.
    pub fn resolve(var: impl Fn(&str) -> Option<OsString>) -> Result<Self, ControlError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = set("XTASK_STATE_DIR") {
            return Ok(StateRoot { dir, runtime_dir: None });
        }
        let dir = match (set("XDG_STATE_HOME"), set("HOME")) {
            (Some(state), _) => state.join(PRODUCT_DIR),
            (None, Some(home)) => home.join(".local/state").join(PRODUCT_DIR),
            (None, None) => return Err(ControlError::NoStateRoot),
        };
        let runtime_dir = set("XDG_RUNTIME_DIR").map(|run| run.join(PRODUCT_DIR));
        Ok(StateRoot { dir, runtime_dir })
    }

    /// The root a loaded configuration names: its `state_root` (from
    /// `XTASK_STATE_DIR` in any layer, else the XDG default), with sockets
    /// under the shell's `$XDG_RUNTIME_DIR/mesh-dev` unless the root was
    /// overridden. `tunnel start` and `dev` both use it, so `status` finds
    /// either.
    pub fn from_config(config: &mesh_config::Config) -> Self {
        let overridden = config.get("XTASK_STATE_DIR").is_some_and(|v| !v.is_empty());
        let runtime_dir = config
            .shell_var("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty() && !overridden)
            .map(|run| Path::new(run).join(PRODUCT_DIR));
        StateRoot { dir: config.state_root.clone(), runtime_dir }
    }

    /// The paths of one configuration's state; nothing is created.
    pub fn tunnel(&self, id: &TunnelId) -> StateDir {
        let dir = self.dir.join(id.as_str());
        let socket_dir = match &self.runtime_dir {
            Some(run) => run.join(id.as_str()),
            None => dir.clone(),
        };
        StateDir {
            id: id.clone(),
            pid_file: dir.join("tunnel.pid"),
            log_file: dir.join("tunnel.log"),
            record_file: dir.join("config.json"),
            socket: socket_dir.join("control.sock"),
            dir,
        }
    }

    /// Every configuration that has a directory under the root, sorted by id.
    /// A missing root means no tunnel has ever run: an empty list.
    pub fn list(&self) -> Result<Vec<StateDir>, ControlError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ControlError::Io { path: self.dir.clone(), source }),
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|source| ControlError::Io { path: self.dir.clone(), source })?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                let mut state = self.tunnel(&TunnelId(name.to_owned()));
                // The recorded socket wins: the tunnel may have started with
                // another XDG_RUNTIME_DIR than this shell has.
                if let Ok(record) = state.read_record() {
                    state.socket = record.socket;
                }
                dirs.push(state);
            }
        }
        dirs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(dirs)
    }
}

/// A short, stable name for one tunnel configuration: a readable prefix from
/// the bastion host and a hash of (host, port, user, forwards), for example
/// `bastion-example-com-3f9a0c1d`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TunnelId(String);

impl TunnelId {
    /// The longest readable prefix kept, so the socket path stays short.
    const PREFIX_MAX: usize = 20;

    /// The id of a configuration. Forwards count as a set: their order in the
    /// configuration does not change the id.
    pub fn new(host: &str, port: u16, user: &str, forwards: &[Forward]) -> Self {
        let mut forwards: Vec<&Forward> = forwards.iter().collect();
        forwards.sort_by(|a, b| {
            (a.local_port, &a.remote_host, a.remote_port, &a.name).cmp(&(
                b.local_port,
                &b.remote_host,
                b.remote_port,
                &b.name,
            ))
        });
        let mut key = format!("{host}\0{port}\0{user}");
        for f in forwards {
            key.push_str(&format!(
                "\0{}\0{}\0{}\0{}",
                f.name, f.local_port, f.remote_host, f.remote_port
            ));
        }
        let hash = fnv1a_64(key.as_bytes());

        let mut prefix: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(Self::PREFIX_MAX)
            .collect();
        prefix = prefix.trim_matches('-').to_owned();
        if prefix.is_empty() {
            prefix.push_str("tunnel");
        }
        TunnelId(format!("{prefix}-{:08x}", (hash >> 32) as u32 ^ hash as u32))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TunnelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// FNV-1a: tiny and, unlike std's `DefaultHasher`, stable across Rust releases,
/// which an id written to disk needs.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The files of one tunnel configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    pub id: TunnelId,
    /// The private (0700) directory holding the files below.
    pub dir: PathBuf,
    /// The running process's pid, locked (`flock`) for as long as it runs.
    pub pid_file: PathBuf,
    /// stdout and stderr of a detached tunnel.
    pub log_file: PathBuf,
    /// `config.json`: what the tunnel serves ([`TunnelRecord`]), no secrets.
    pub record_file: PathBuf,
    /// The control socket (0600).
    pub socket: PathBuf,
}

impl StateDir {
    /// Creates the state directory and the socket's directory, both 0700
    /// (existing ones are tightened to 0700 too).
    pub fn create(&self) -> Result<(), ControlError> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ControlError::SocketPathTooLong { path: self.socket.clone(), len });
        }
        private_dir(&self.dir)?;
        if let Some(parent) = self.socket.parent() {
            private_dir(parent)?;
        }
        Ok(())
    }

    /// Takes the pid file's lock and writes our pid in it, or says which
    /// process already runs this configuration. The lock is released when the
    /// process ends, however it ends, so a crash never leaves a "running" lock.
    pub fn lock(&self) -> Result<PidLock, ControlError> {
        self.create()?;
        let io_err = |source| ControlError::Io { path: self.pid_file.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.pid_file)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ControlError::AlreadyRunning {
                    id: self.id.clone(),
                    pid: self.read_pid().ok().flatten(),
                });
            }
            Err((_, errno)) => return Err(io_err(io::Error::from(errno))),
        };
        lock.set_len(0).map_err(io_err)?;
        writeln!(*lock, "{}", std::process::id()).map_err(io_err)?;
        lock.sync_all().map_err(io_err)?;
        Ok(PidLock { state: self.clone(), _lock: lock })
    }

    /// True when some process holds the pid file's lock, that is, a tunnel of
    /// this configuration runs (or is starting).
    pub fn is_locked(&self) -> Result<bool, ControlError> {
        let file = match File::open(&self.pid_file) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(ControlError::Io { path: self.pid_file.clone(), source }),
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => Ok(false),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, errno)) => {
                Err(ControlError::Io { path: self.pid_file.clone(), source: errno.into() })
            }
        }
    }

    /// The pid recorded in the pid file; `None` when there is no pid file or
    /// it is empty (a start that has not written it yet).
    pub fn read_pid(&self) -> Result<Option<u32>, ControlError> {
        let mut text = String::new();
        match File::open(&self.pid_file).and_then(|mut f| f.read_to_string(&mut text)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ControlError::Io { path: self.pid_file.clone(), source }),
        }
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| ControlError::BadPidFile {
            path: self.pid_file.clone(),
            text: text.into(),
        })
    }

    /// Writes `config.json` (0600), replacing it atomically.
    pub fn write_record(&self, record: &TunnelRecord) -> Result<(), ControlError> {
        let io_err = |source| ControlError::Io { path: self.record_file.clone(), source };
        let tmp = self.record_file.with_extension("json.tmp");
        let mut text = serde_json::to_string_pretty(record).expect("a record always serializes");
        text.push('\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(text.as_bytes()).map_err(io_err)?;
        fs::rename(&tmp, &self.record_file).map_err(io_err)
    }

    pub fn read_record(&self) -> Result<TunnelRecord, ControlError> {
        let text = fs::read_to_string(&self.record_file)
            .map_err(|source| ControlError::Io { path: self.record_file.clone(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| ControlError::BadRecord { path: self.record_file.clone(), source })
    }

    /// The record of the tunnel running now: `None` when none runs or when
    /// `config.json` is missing, unreadable or names another pid (a previous
    /// run's record, while a new start has not yet written its own).
    pub fn running_record(&self) -> Option<TunnelRecord> {
        if !self.is_locked().ok()? {
            return None;
        }
        let pid = self.read_pid().ok()??;
        self.read_record().ok().filter(|record| record.pid == pid)
    }

    /// Removes what a dead tunnel left behind: the socket and the pid file.
    /// Only call it when [`StateDir::is_locked`] is false. Returns the paths
    /// removed.
    pub fn remove_stale(&self) -> Result<Vec<PathBuf>, ControlError> {
        let mut removed = Vec::new();
        for path in [&self.socket, &self.pid_file] {
            match fs::remove_file(path) {
                Ok(()) => removed.push(path.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ControlError::Io { path: path.clone(), source }),
            }
        }
        Ok(removed)
    }
}

/// Creates `dir` and its parents, then makes `dir` itself 0700.
fn private_dir(dir: &Path) -> Result<(), ControlError> {
    let io_err = |source| ControlError::Io { path: dir.to_owned(), source };
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)
}

/// The pid file, locked by this process: proof that it is the one tunnel of
/// its configuration. Dropping it removes the pid file and releases the lock.
#[derive(Debug)]
pub struct PidLock {
    state: StateDir,
    _lock: Flock<File>,
}

impl PidLock {
    pub fn state(&self) -> &StateDir {
        &self.state
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other start can see a pid file
        // that names a process which is about to be gone.
        if let Err(error) = fs::remove_file(&self.state.pid_file) {
            tracing::warn!(path = %self.state.pid_file.display(), %error, "cannot remove pid file");
        }
    }
}

/// What a tunnel serves, written to `config.json` and returned by `status`.
/// Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    pub id: String,
    pub bastion_host: String,
    pub bastion_port: u16,
    pub bastion_user: String,
    pub forwards: Vec<RecordedForward>,
    /// The local addresses the listeners are bound to.
    pub bind_addrs: Vec<std::net::IpAddr>,
    /// The control socket, so `status` finds it whatever this shell's
    /// `XDG_RUNTIME_DIR` is.
    pub socket: PathBuf,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// The binary running the tunnel, to check a pid is ours before a signal.
    pub exe: Option<PathBuf>,
    /// Which command runs the tunnel: `stop` never stops one that `dev` runs.
    /// A record written before this field existed reads as `tunnel`.
    #[serde(default)]
    pub owner: TunnelOwner,
    /// Started with `tunnel start --detach`: `restart` starts it detached again.
    #[serde(default)]
    pub detached: bool,
}

/// The command whose process runs a tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelOwner {
    /// `cargo xtask tunnel start` (in the foreground, detached or as a service).
    #[default]
    Tunnel,
    /// `cargo xtask dev`, for its session: stopping it is `dev`'s job.
    Dev,
}

impl TunnelRecord {
    /// The record of a tunnel this process runs from `spec` in `state`.
    pub fn new(state: &StateDir, spec: &crate::TunnelSpec) -> Self {
        let bind_addrs = if spec.bind_addrs.is_empty() {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        } else {
            spec.bind_addrs.clone()
        };
        // The bastion as dialled: a `Host` alias of ~/.ssh/config fills what the spec leaves unset.
        let (bastion_host, bastion_port, bastion_user) = match spec.resolve() {
            Ok(target) => (target.host, target.port, target.user),
            Err(_) => (spec.host.clone(), spec.port, spec.user.clone()),
        };
        TunnelRecord {
            id: state.id.to_string(),
            bastion_host,
            bastion_port,
            bastion_user,
            forwards: spec.forwards.iter().map(Into::into).collect(),
            bind_addrs,
            socket: state.socket.clone(),
            pid: std::process::id(),
            started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            exe: std::env::current_exe().ok(),
            owner: TunnelOwner::Tunnel,
            detached: false,
        }
    }
}

/// A forward as recorded on disk (`mesh_config::Forward` is write-only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedForward {
    pub name: String,
    pub local_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
}

impl From<&Forward> for RecordedForward {
    fn from(f: &Forward) -> Self {
        RecordedForward {
            name: f.name.clone(),
            local_port: f.local_port,
            remote_host: f.remote_host.clone(),
            remote_port: f.remote_port,
        }
    }
}

/// A tunnel's state directory under `root`, created: the other control modules' unit tests.
#[cfg(test)]
pub(crate) fn test_state(root: &Path) -> StateDir {
    let id = TunnelId::new("b", 22, "u", &[]);
    let state = StateRoot { dir: root.into(), runtime_dir: None }.tunnel(&id);
    state.create().unwrap();
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn forward(name: &str, local: u16, host: &str, port: u16) -> Forward {
        Forward {
            name: name.into(),
            local_port: local,
            remote_host: host.into(),
            remote_port: port,
        }
    }

    fn resolve(vars: &[(&str, &str)]) -> Result<StateRoot, ControlError> {
        let map: HashMap<String, OsString> =
            vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        StateRoot::resolve(|name| map.get(name).cloned())
    }

    #[test]
    fn state_root_follows_override_then_xdg_then_home() {
        let root = resolve(&[
            ("XTASK_STATE_DIR", "/t/state"),
            ("XDG_STATE_HOME", "/x"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HOME", "/h"),
        ])
        .unwrap();
        assert_eq!(root, StateRoot { dir: "/t/state".into(), runtime_dir: None });

        let root =
            resolve(&[("XDG_STATE_HOME", "/x"), ("XDG_RUNTIME_DIR", "/run/user/1")]).unwrap();
        assert_eq!(root.dir, PathBuf::from("/x/mesh-dev"));
        assert_eq!(root.runtime_dir, Some(PathBuf::from("/run/user/1/mesh-dev")));

        let root = resolve(&[("HOME", "/h"), ("XDG_STATE_HOME", "")]).unwrap();
        assert_eq!(root, StateRoot { dir: "/h/.local/state/mesh-dev".into(), runtime_dir: None });

        assert!(matches!(resolve(&[]), Err(ControlError::NoStateRoot)));
    }

    #[test]
    fn tunnel_id_is_stable_readable_and_distinguishes_configurations() {
        let redis = forward("redis", 6379, "cache.example.internal", 6379);
        let pg = forward("postgres", 5432, "db.example.internal", 5432);
        let id = TunnelId::new("Bastion.Example.com", 22, "ec2-user", &[redis.clone(), pg.clone()]);

        // A fixed value: the id names directories on disk, so it must not
        // change between builds or Rust releases.
        assert_eq!(id.as_str(), "bastion-example-com-7734a5d1");
        assert_eq!(id, TunnelId::new("Bastion.Example.com", 22, "ec2-user", &[pg, redis.clone()]));
        let only_redis = [redis];
        let others = [
            TunnelId::new("Bastion.Example.com", 2222, "ec2-user", &only_redis),
            TunnelId::new("Bastion.Example.com", 22, "admin", &only_redis),
            TunnelId::new("staging.example.com", 22, "ec2-user", &only_redis),
            TunnelId::new("Bastion.Example.com", 22, "ec2-user", &only_redis),
        ];
        for other in &others {
            assert_ne!(&id, other);
        }
        assert!(TunnelId::new("::", 22, "u", &[]).as_str().starts_with("tunnel-"));
        assert!(TunnelId::new("::1", 22, "u", &[]).as_str().starts_with("1-"));
        assert!(TunnelId::new(&"x".repeat(200), 22, "u", &[]).as_str().len() <= 29);
    }

    #[test]
    fn state_dir_is_private_and_socket_goes_to_runtime_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot {
            dir: tmp.path().join("state"),
            runtime_dir: Some(tmp.path().join("run/mesh-dev")),
        };
        let state = root.tunnel(&TunnelId::new("b", 22, "u", &[]));
        state.create().unwrap();

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.dir), 0o700);
        assert_eq!(mode(state.socket.parent().unwrap()), 0o700);
        assert_eq!(
            state.socket,
            tmp.path().join("run/mesh-dev").join(state.id.as_str()).join("control.sock")
        );
        assert_eq!(state.pid_file, state.dir.join("tunnel.pid"));

        // An existing, too open directory is tightened.
        fs::set_permissions(&state.dir, fs::Permissions::from_mode(0o755)).unwrap();
        state.create().unwrap();
        assert_eq!(mode(&state.dir), 0o700);
    }

    #[test]
    fn too_long_socket_path_is_refused_with_its_length() {
        let root = StateRoot {
            dir: PathBuf::from(format!("/tmp/{}", "d".repeat(100))),
            runtime_dir: None,
        };
        let err = root.tunnel(&TunnelId::new("b", 22, "u", &[])).create().unwrap_err();
        assert!(
            matches!(err, ControlError::SocketPathTooLong { len, .. } if len > MAX_SOCKET_PATH)
        );
    }

    #[test]
    fn second_lock_of_a_configuration_names_the_running_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().into(), runtime_dir: None };
        let state = root.tunnel(&TunnelId::new("b", 22, "u", &[]));
        assert!(!state.is_locked().unwrap());

        let lock = state.lock().unwrap();
        assert!(state.is_locked().unwrap());
        assert_eq!(state.read_pid().unwrap(), Some(std::process::id()));
        let mode = fs::metadata(&state.pid_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        match state.lock() {
            Err(ControlError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }

        drop(lock);
        assert!(!state.is_locked().unwrap());
        assert!(!state.pid_file.exists());
        state.lock().unwrap();
    }

    #[test]
    fn record_round_trips_and_list_finds_every_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().join("state"), runtime_dir: None };
        assert!(root.list().unwrap().is_empty());

        let staging = root.tunnel(&TunnelId::new("staging", 22, "u", &[]));
        let prod = root.tunnel(&TunnelId::new("prod", 22, "u", &[]));
        staging.create().unwrap();
        prod.create().unwrap();
        let record = TunnelRecord {
            id: prod.id.to_string(),
            bastion_host: "prod".into(),
            bastion_port: 22,
            bastion_user: "u".into(),
            forwards: vec![(&forward("redis", 6379, "cache", 6379)).into()],
            bind_addrs: vec!["127.0.0.1".parse().unwrap()],
            socket: "/run/elsewhere/control.sock".into(),
            pid: 42,
            started_at: 1_700_000_000,
            exe: None,
            owner: TunnelOwner::Dev,
            detached: false,
        };
        prod.write_record(&record).unwrap();
        assert_eq!(prod.read_record().unwrap(), record);

        let listed = root.list().unwrap();
        let ids: Vec<_> = listed.iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids, vec![prod.id.clone(), staging.id.clone()]);
        assert_eq!(listed[0].socket, PathBuf::from("/run/elsewhere/control.sock"));
        assert_eq!(listed[1].socket, staging.socket);
    }

    #[test]
    fn running_record_is_the_lock_holders_only_and_an_old_record_reads_as_tunnel() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot { dir: tmp.path().into(), runtime_dir: None };
        let state = root.tunnel(&TunnelId::new("b", 22, "u", &[]));
        state.create().unwrap();
        // A record from before `owner` and `detached` existed.
        let old = r#"{"id":"b","bastion_host":"b","bastion_port":22,"bastion_user":"u",
            "forwards":[],"bind_addrs":[],"socket":"/s","pid":PID,"started_at":0,"exe":null}"#;
        let write_old =
            |pid: u32| fs::write(&state.record_file, old.replace("PID", &pid.to_string())).unwrap();
        write_old(std::process::id());
        assert_eq!(state.running_record(), None, "nobody holds the lock");

        let _lock = state.lock().unwrap();
        let record = state.running_record().expect("our pid, our lock");
        assert_eq!((record.owner, record.detached), (TunnelOwner::Tunnel, false));

        // A previous run's record (another pid) is not the running tunnel's.
        write_old(std::process::id() + 1);
        assert_eq!(state.running_record(), None);
    }
}
