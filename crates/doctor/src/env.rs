//! What every check is handed: the configuration (when it loaded), the
//! environment the run sees, and helpers to find and run tools within a timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::Options;

/// The shared inputs of one run.
pub(crate) struct Env<'a> {
    /// The workspace root: `.env`, `.gitignore`, `services.toml`.
    pub root: &'a Path,
    /// `--env-file` paths as given; when any, they replace `.env` and `.env.local`.
    pub env_files: &'a [PathBuf],
    /// `None` when the configuration did not load (the Configuration category says why).
    pub config: Option<&'a mesh_config::Config>,
    /// The process environment as the caller passed it (tests pass their own).
    pub shell: &'a BTreeMap<String, String>,
    /// What a child process gets: the shell, plus values read from env files
    /// that the shell does not set.
    pub child_env: BTreeMap<String, String>,
    pub options: &'a Options,
}

impl Env<'_> {
    /// The bastion and Redis are the sandbox's: `--sandbox`, or the env file `sandbox up`
    /// wrote (MESH_SANDBOX=1; its bastion and Redis are then checked like any other). No AWS.
    pub fn sandbox_config(&self) -> bool {
        self.options.sandbox || self.config.is_some_and(|c| c.get("MESH_SANDBOX") == Some("1"))
    }

    /// The services are the sandbox's stand-ins: only `--sandbox` (`dev --sandbox` runs them).
    /// The sandbox's env file alone does not say so: `dev --env-file <it>` runs the
    /// manifest's real services against the sandbox's Redis, and they need `go`.
    pub fn stand_ins(&self) -> bool {
        self.options.sandbox
    }
}

/// A tool's captured output.
pub(crate) struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Why a tool could not be run to the end.
#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    Timeout(Duration),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot run it: {e}"),
            RunError::Timeout(after) => write!(f, "no answer within {}s", after.as_secs_f32()),
        }
    }
}

impl<'a> Env<'a> {
    pub fn new(
        root: &'a Path,
        env_files: &'a [PathBuf],
        config: Option<&'a mesh_config::Config>,
        shell: &'a BTreeMap<String, String>,
        options: &'a Options,
    ) -> Env<'a> {
        let mut child_env = config.map(|c| c.child_env()).unwrap_or_default();
        child_env.extend(shell.iter().map(|(k, v)| (k.clone(), v.clone())));
        Env { root, env_files, config, shell, child_env, options }
    }

    /// A variable of the process environment, empty counting as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.shell.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A variable as a child sees it (shell or env files).
    pub fn child_var(&self, name: &str) -> Option<&str> {
        self.child_env.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// `binary` on the run's PATH.
    pub fn which(&self, binary: &str) -> Option<PathBuf> {
        let path = self.var("PATH").unwrap_or("");
        which::which_in(binary, Some(path), self.root).ok()
    }

    /// Runs `program` with the child environment only, killed when `timeout` passes.
    /// Secrets stay out of it (a tool's `--version` needs none), except the AWS
    /// credentials the AWS CLI is run to check.
    pub async fn run(
        &self,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, RunError> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                self.child_env.iter().filter(|(name, _)| {
                    !mesh_config::looks_secret(name) || name.starts_with("AWS_")
                }),
            )
            .current_dir(self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(RunError::Spawn)?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(RunError::Timeout(timeout)),
            Ok(Err(e)) => Err(RunError::Spawn(e)),
            Ok(Ok(out)) => Ok(Output {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
        }
    }

    /// A path as users recognise it: `~/...` under HOME.
    pub fn show(&self, path: &Path) -> String {
        if let Some(home) = self.home() {
            if let Ok(rest) = path.strip_prefix(&home) {
                return format!("~/{}", rest.display());
            }
        }
        path.display().to_string()
    }
}

/// The system's package manager, for install commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packager {
    Apt,
    Brew,
    Unknown,
}

impl Packager {
    pub fn detect(env: &Env<'_>) -> Packager {
        if cfg!(target_os = "macos") {
            Packager::Brew
        } else if env.which("apt-get").is_some() || Path::new("/etc/debian_version").exists() {
            Packager::Apt
        } else if env.which("brew").is_some() {
            Packager::Brew
        } else {
            Packager::Unknown
        }
    }
}

/// The install command for a tool on this system, and the apt package when apt is the way.
pub(crate) fn install_hint(env: &Env<'_>, tool: &str) -> (String, Option<&'static str>) {
    let (apt, brew, other) = match tool {
        "redis-cli" => ("redis-tools", "redis", "install Redis's command-line tools"),
        "aws" => ("awscli", "awscli", "see https://aws.amazon.com/cli/"),
        "ssh" => ("openssh-client", "openssh", "install the OpenSSH client"),
        "go" => ("golang-go", "go", "see https://go.dev/dl/"),
        "git" => ("git", "git", "install git"),
        _ => return (format!("install `{tool}` and put it on PATH"), None),
    };
    match Packager::detect(env) {
        Packager::Apt => {
            let sudo = if is_root() { "" } else { "sudo " };
            let mut hint = format!("{sudo}apt-get install -y {apt}");
            if tool == "go" {
                hint.push_str(" (or a newer Go from https://go.dev/dl/)");
            }
            (hint, Some(apt))
        }
        Packager::Brew => (format!("brew install {brew}"), None),
        Packager::Unknown => (other.to_string(), None),
    }
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
