//! The sandbox as a whole: a private temporary directory holding a local Redis
//! (plain, or TLS only with a throwaway CA), our bastion in front of it under an
//! ElastiCache-like name, and the env file that points the dev pipeline at them.

use crate::bastion::{Bastion, BastionConfig};
use crate::net::{free_loopback_port, random_token};
use crate::redis_server::LocalRedis;
use crate::tls::TlsFiles;
use crate::{Result, SandboxError};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// The name of the env file inside the sandbox directory.
pub const SANDBOX_ENV_FILE: &str = "sandbox.env";

/// The user name the sandbox tells the tunnel to log in as.
const BASTION_USER: &str = "ec2-user";

/// The Redis port behind the endpoint name, as on ElastiCache.
const ENDPOINT_PORT: u16 = 6379;

/// Variables the sandbox sets to empty so a value exported in the shell (say,
/// for staging) cannot add forwards or credentials the sandbox does not serve.
/// `REDIS_CA_CERT` is set instead when the sandbox runs TLS.
const CLEARED: &[&str] = &[
    "BASTION_KEY_PASSPHRASE",
    "RDS_ENDPOINT",
    "REDIS_CA_CERT",
    "REDIS_USERNAME",
    "TUNNEL_EXTRA_FORWARDS",
];

/// How the sandbox is set up. `Default` gives a fresh temp dir and the
/// services' usual ports when free (else free ones).
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    /// Where the sandbox's temporary directory is created; the system temp dir
    /// when `None`.
    pub parent_dir: Option<PathBuf>,
    /// The rest-api port; 8081 when free, else a free port.
    pub rest_api_port: Option<u16>,
    /// The mcp-server port; 8080 when free, else a free port.
    pub mcp_server_port: Option<u16>,
    /// The worker port; 8088 when free, else a free port.
    pub worker_port: Option<u16>,
    /// The local port of the Redis forward; a free port when `None`.
    pub redis_tunnel_port: Option<u16>,
    /// Run Redis with TLS only, its certificate issued for the endpoint's name
    /// by a throwaway CA (`REDIS_CA_CERT` in the env file).
    pub tls: bool,
}

/// A running sandbox. [`Sandbox::shutdown`] stops it; dropping it does the
/// same without waiting for goodbyes. Either way no process, listener or file
/// is left.
pub struct Sandbox {
    // Field order is drop order: the bastion and Redis stop before their
    // directory is removed.
    /// Our SSH bastion, forwarding the endpoint name to Redis.
    bastion: Option<Bastion>,
    /// The local redis-server.
    redis: Option<LocalRedis>,
    /// The in-VPC-style endpoint name, e.g. `sandbox-ab12cd.serverless.use1.cache.amazonaws.com`.
    endpoint: String,
    /// Every variable the dev pipeline needs, as also written to the env file.
    vars: BTreeMap<String, String>,
    /// The env file (mode 0600: it holds the Redis password).
    env_file: PathBuf,
    /// The directory holding keys, configs, logs and the env file.
    dir: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Starts Redis and the bastion in a new private directory and writes the
    /// env file. Must be called inside a tokio runtime.
    pub async fn up(options: SandboxOptions) -> Result<Sandbox> {
        let dir = make_dir(options.parent_dir.as_deref())?;
        let endpoint = format!("sandbox-{}.serverless.use1.cache.amazonaws.com", random_token(6)?);
        let tls = match options.tls {
            true => Some(TlsFiles::generate(dir.path(), &endpoint)?),
            false => None,
        };
        let redis = LocalRedis::start_with(dir.path(), tls)?;

        let redis_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, redis.port()));
        let targets = BTreeMap::from([(format!("{endpoint}:{ENDPOINT_PORT}"), redis_addr)]);
        let bastion =
            Bastion::start(BastionConfig { dir: dir.path().to_path_buf(), targets }).await?;

        let vars = sandbox_vars(&options, &endpoint, &bastion, &redis)?;
        let env_file = dir.path().join(SANDBOX_ENV_FILE);
        write_env_file(&env_file, &vars)?;
        info!(
            dir = %dir.path().display(),
            %endpoint,
            bastion_port = bastion.port(),
            tls = options.tls,
            "sandbox up"
        );

        Ok(Sandbox {
            bastion: Some(bastion),
            redis: Some(redis),
            endpoint,
            vars,
            env_file,
            dir: Some(dir),
        })
    }

    /// The env file to pass as `--env-file`.
    pub fn env_file(&self) -> &Path {
        &self.env_file
    }

    /// The sandbox's variables; they must win over the shell's and every file's.
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.vars.clone()
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|dir| dir.path()).unwrap_or(Path::new(""))
    }

    /// The endpoint name the bastion resolves to the local Redis.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bastion, for its port and key paths.
    pub fn bastion(&self) -> Option<&Bastion> {
        self.bastion.as_ref()
    }

    /// The CA that issued Redis's certificate, when the sandbox runs TLS.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.redis.as_ref()?.tls().map(|tls| tls.ca_cert.as_path())
    }

    /// The local Redis, for its port and password.
    pub fn redis(&self) -> Option<&LocalRedis> {
        self.redis.as_ref()
    }

    /// Stops the bastion and Redis and removes the directory.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(bastion) = self.bastion.take() {
            bastion.shutdown().await;
        }
        if let Some(mut redis) = self.redis.take() {
            redis.stop();
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|err| SandboxError::io("remove", path, err))?;
        }
        info!("sandbox down");
        Ok(())
    }
}

/// The file in a sandbox's directory naming the process that owns it.
const OWNER_FILE: &str = "owner.pid";

fn make_dir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let dir = new_dir(parent)?;
    remove_stale(dir.path().parent().unwrap_or(Path::new("/")));
    let owner = dir.path().join(OWNER_FILE);
    std::fs::write(&owner, format!("{}\n", std::process::id()))
        .map_err(|err| SandboxError::io("write", owner, err))?;
    Ok(dir)
}

/// Removes the directories of sandboxes whose owner died without cleaning up (a `dev` killed
/// outright): their redis-server died with it, and nothing else would ever remove them.
/// A directory without an owner file, or whose owner is alive, is left alone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_sandbox = entry.file_name().to_string_lossy().starts_with("mesh-sandbox-");
        let Ok(text) = std::fs::read_to_string(path.join(OWNER_FILE)) else { continue };
        let Ok(pid) = text.trim().parse::<i32>() else { continue };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if is_sandbox && pid > 1 && gone {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => info!(dir = %path.display(), pid, "removed a dead sandbox's directory"),
                Err(err) => debug!(dir = %path.display(), %err, "could not remove a dead sandbox"),
            }
        }
    }
}

fn new_dir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    // Private from its creation: it will hold a private key and the Redis password.
    builder.prefix("mesh-sandbox-").permissions(std::fs::Permissions::from_mode(0o700));
    match parent {
        Some(parent) => {
            std::fs::create_dir_all(parent)
                .map_err(|err| SandboxError::io("create", parent, err))?;
            builder
                .tempdir_in(parent)
                .map_err(|err| SandboxError::io("create a dir in", parent, err))
        }
        None => builder
            .tempdir()
            .map_err(|err| SandboxError::io("create a dir in", std::env::temp_dir(), err)),
    }
}

/// The variables of the variables table, pointed at the sandbox. Only the
/// primary names: the config layers map the older aliases (`NAT_INSTANCE_IP`,
/// `SSH_KEY_PATH`, `REDIS_HOST`) onto them, so this layer wins over those too.
fn sandbox_vars(
    options: &SandboxOptions,
    endpoint: &str,
    bastion: &Bastion,
    redis: &LocalRedis,
) -> Result<BTreeMap<String, String>> {
    let tunnel_port = match options.redis_tunnel_port {
        Some(port) => port,
        None => free_loopback_port()?,
    };
    let redis_addr = format!("127.0.0.1:{tunnel_port}");
    let key = bastion.user_key_path().display().to_string();
    let known_hosts = bastion.known_hosts_path().display().to_string();
    let mut vars = BTreeMap::new();
    let mut set = |name: &str, value: String| vars.insert(name.to_string(), value);

    set("MESH_SANDBOX", "1".into());
    set("ENVIRONMENT", "development".into());
    set("BASTION_HOST_IP", "127.0.0.1".into());
    set("BASTION_PORT", bastion.port().to_string());
    set("BASTION_USER", BASTION_USER.into());
    set("BASTION_KEY_FILE", key);
    set("BASTION_KNOWN_HOSTS", known_hosts);
    set("ELASTICACHE_ENDPOINT", endpoint.into());
    set("REDIS_TUNNEL_PORT", tunnel_port.to_string());
    set("REDIS_PASSWORD", redis.password().expose().into());
    set("REDIS_TLS_ENABLED", redis.tls().is_some().to_string());
    set("REDIS_TLS_SKIP_VERIFY", "false".into());
    set("USE_SSH_TUNNEL_FOR_REDIS", "true".into());
    set("REDIS_ADDR", redis_addr.clone());
    set("REDIS_ADDRESS", redis_addr);
    set("REST_API_PORT", service_port(options.rest_api_port, 8081)?.to_string());
    set("MCP_SERVER_PORT", service_port(options.mcp_server_port, 8080)?.to_string());
    set("WORKER_PORT", service_port(options.worker_port, 8088)?.to_string());
    for name in CLEARED {
        set(name, String::new());
    }
    if let Some(tls) = redis.tls() {
        set("REDIS_CA_CERT", tls.ca_cert.display().to_string());
    }
    Ok(vars)
}

/// The requested port, else the usual one when free, else any free port.
fn service_port(requested: Option<u16>, usual: u16) -> Result<u16> {
    if let Some(port) = requested {
        return Ok(port);
    }
    if TcpListener::bind((Ipv4Addr::LOCALHOST, usual)).is_ok() {
        return Ok(usual);
    }
    free_loopback_port()
}

/// Writes `vars` as a dotenv file, private to its owner. Values are single-quoted
/// (no escapes, no `$` expansion in dotenv) unless they hold a quote.
fn write_env_file(path: &Path, vars: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::from(
        "# Written by the mesh sandbox; removed when it stops. Use it with\n\
         # `cargo xtask --env-file <this file> ...`. It holds a throwaway password.\n",
    );
    for (name, value) in vars {
        if value.contains('\'') {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$");
            text.push_str(&format!("{name}=\"{escaped}\"\n"));
        } else {
            text.push_str(&format!("{name}='{value}'\n"));
        }
    }
    crate::tls::private_file(path, text.as_bytes())
}
