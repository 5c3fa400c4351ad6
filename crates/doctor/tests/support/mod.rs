//! Shared by the doctor's tests and benchmark: a throwaway workspace root and
//! HOME, a controlled PATH, real sshd and redis-server, moto for AWS, and a
//! loopback port that silently drops connection attempts.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_doctor::{Category, CategoryReport, Check, Doctor, Options, Report};
use mesh_testkit::{free_port, RedisServer, Sshd};

/// A workspace root, a HOME and the environment the doctor sees.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub home: tempfile::TempDir,
    pub state: mesh_testkit::StateDir,
    pub shell: BTreeMap<String, String>,
    pub flags: Vec<(String, String)>,
    /// Directories put on PATH, in order (tools are linked into `bin`).
    pub bin: PathBuf,
}

impl Fixture {
    /// An empty root and HOME, and a PATH with only the tools linked by [`Fixture::tool`].
    pub fn new() -> Fixture {
        let root = tempfile::Builder::new().prefix("doctor-root-").tempdir().unwrap();
        let home = tempfile::Builder::new().prefix("doctor-home-").tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let state = mesh_testkit::StateDir::new();
        let mut shell = BTreeMap::new();
        shell.insert("HOME".into(), home.path().display().to_string());
        shell.insert("PATH".into(), bin.display().to_string());
        shell.insert("XTASK_STATE_DIR".into(), state.path().display().to_string());
        // Never ask an instance metadata service anything from a test.
        shell.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        Fixture { root, home, state, shell, flags: Vec::new(), bin }
    }

    /// Makes `name` (found on this machine) available on the doctor's PATH.
    pub fn tool(&self, name: &str) -> &Fixture {
        let found = mesh_testkit::require(name);
        std::os::unix::fs::symlink(found, self.bin.join(name)).unwrap();
        self
    }

    pub fn tools(&self, names: &[&str]) -> &Fixture {
        for name in names {
            self.tool(name);
        }
        self
    }

    pub fn set(&mut self, name: &str, value: impl ToString) -> &mut Fixture {
        self.flags.push((name.to_string(), value.to_string()));
        self
    }

    pub fn shell_var(&mut self, name: &str, value: impl ToString) -> &mut Fixture {
        self.shell.insert(name.to_string(), value.to_string());
        self
    }

    /// Puts a directory before the others on PATH.
    pub fn path_first(&mut self, dir: &Path) -> &mut Fixture {
        let path = format!("{}:{}", dir.display(), self.shell["PATH"]);
        self.shell.insert("PATH".into(), path);
        self
    }

    /// Points the configuration at a real sshd as the bastion and `endpoint` as Redis.
    pub fn bastion(&mut self, sshd: &Sshd, endpoint: SocketAddr) -> &mut Fixture {
        self.set("BASTION_HOST_IP", "127.0.0.1")
            .set("BASTION_PORT", sshd.port())
            .set("BASTION_USER", sshd.user())
            .set("BASTION_KEY_FILE", sshd.user_key().private_path.display())
            .set("BASTION_KNOWN_HOSTS", sshd.known_hosts().display())
            .set("ELASTICACHE_ENDPOINT", endpoint)
            .set("REDIS_TUNNEL_PORT", free_port())
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn load(&self) -> mesh_config::LoadOptions {
        mesh_config::LoadOptions {
            root: self.root.path().to_path_buf(),
            cwd: self.root.path().to_path_buf(),
            env_files: Vec::new(),
            flags: self.flags.clone(),
            sandbox: Vec::new(),
            shell: self.shell.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Options for a non-interactive run without services and with a 2 s timeout.
    pub fn options(&self) -> Options {
        Options { services: false, timeout: Duration::from_secs(2), ..Options::default() }
    }

    pub async fn run(&self, options: Options) -> Report {
        Doctor::new(self.load(), options).run().await
    }
}

pub fn category(report: &Report, category: Category) -> &CategoryReport {
    report.category(category).unwrap_or_else(|| panic!("no {category:?} in {report:#?}"))
}

pub fn find<'r>(report: &'r Report, category: Category, name: &str) -> &'r Check {
    let c = self::category(report, category);
    c.checks
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {category:?}: {c:#?}"))
}

/// The sshd and Redis of an all-green run: Redis with a password, sshd as its bastion.
pub struct Servers {
    pub sshd: Sshd,
    pub redis: RedisServer,
}

impl Servers {
    pub fn start() -> Servers {
        Servers {
            sshd: Sshd::builder().start(),
            redis: RedisServer::builder().password("s3cret-pw").start(),
        }
    }

    pub fn configure(&self, fixture: &mut Fixture) {
        fixture.bastion(&self.sshd, self.redis.addr()).set("REDIS_PASSWORD", "s3cret-pw");
    }
}

/// The virtual environment `cargo xtask ci` creates with the AWS CLI and moto.
pub fn aws_venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/aws-venv/bin");
    for binary in ["aws", "moto_server"] {
        assert!(
            venv.join(binary).is_file(),
            "{} is missing: run `cargo xtask ci` (or `cargo xtask ci --setup-only`), which \
             creates target/aws-venv with the pinned AWS CLI and moto",
            venv.join(binary).display()
        );
    }
    venv.canonicalize().unwrap()
}

/// A local `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start(venv: &Path) -> Moto {
        let port = free_port();
        let child = Command::new(venv.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that accepts nothing: its backlog is full, so the kernel
/// drops every further SYN, as a security group dropping packets does.
pub struct Blackhole {
    _listener: tokio::net::TcpListener,
    _queued: Vec<TcpStream>,
    pub port: u16,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        // Fill the accept queue; a connect that does not complete quickly shows it is full.
        for _ in 0..4 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(_) => break,
            }
        }
        Blackhole { _listener: listener, _queued: queued, port: addr.port() }
    }
}
