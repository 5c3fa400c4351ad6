//! The doctor: every prerequisite of the dev workflow checked at once, each
//! problem with its severity (`[✓]`, `[!]`, `[✗]`) and its exact fix.
//!
//! Checks run concurrently, each bounded by [`Options::timeout`], and the whole
//! run by [`Options::deadline`], so a bastion that drops packets costs one
//! timeout, not a sum of them. `[✗]` is kept for what blocks the workflow at
//! hand: no AWS check for the sandbox, `go` only when services will run.
//!
//! ```no_run
//! # async fn demo(load: mesh_config::LoadOptions) {
//! let doctor = mesh_doctor::Doctor::new(load, mesh_doctor::Options::default());
//! let report = doctor.run().await;
//! std::process::exit(report.exit_code.into());
//! # }
//! ```
//!
//! `dev` and the doctor share one SSH session: pass a running tunnel in
//! [`Options::tunnel`] and the bastion and Redis checks use it; otherwise the
//! doctor opens its own (on free local ports unless [`Options::bind_configured`])
//! and hands it back in [`Report::session`].

mod checks;
mod env;
mod fix;
mod report;

pub use fix::{Fix, FixError};
pub use report::{Category, CategoryReport, Check, Report, Severity};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::{Config, ConfigError, LoadOptions, Secret};

use crate::env::Env;

/// A running tunnel shared between `dev` and the doctor.
pub type SharedSession = Arc<mesh_tunnel::Tunnel>;

/// The default bound of one check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check and how.
#[derive(Clone)]
pub struct Options {
    /// Checking for `dev --sandbox`: no AWS, no real bastion required.
    pub sandbox: bool,
    /// The services will run (`dev` without `--no-services`): the manifest, its
    /// programs and ports, and `go`, become blocking.
    pub services: bool,
    /// Bounds each check (a TCP connect, a tool's `--version`, an STS call).
    pub timeout: Duration,
    /// Local checks only: no bastion, Redis or AWS call (what `dev` runs first).
    pub quick: bool,
    /// Whether a person can be asked for a key's passphrase on this terminal.
    pub interactive: bool,
    /// A tunnel already running in this process (`dev`'s): reused, never a second session.
    pub tunnel: Option<SharedSession>,
    /// Bind the doctor's own tunnel on the configured local ports (for `dev` to keep it)
    /// instead of free ones.
    pub bind_configured: bool,
    /// The service manifest; `None` means `services.toml` at the workspace root.
    pub manifest: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sandbox: false,
            services: true,
            timeout: DEFAULT_TIMEOUT,
            quick: false,
            interactive: false,
            tunnel: None,
            bind_configured: false,
            manifest: None,
        }
    }
}

impl Options {
    /// The bound of the whole run: the longest chain is the bastion (a TCP probe,
    /// then connect and authentication, then a channel per forward) followed by
    /// Redis through its session; everything else runs beside it. A dropped
    /// packet costs one timeout; this is only the safety net.
    pub fn deadline(&self) -> Duration {
        self.timeout * 4 + Duration::from_secs(1)
    }
}

/// One doctor run, prepared: the configuration loaded (or why it did not).
pub struct Doctor {
    load: LoadOptions,
    shell: BTreeMap<String, String>,
    config: Result<Config, ConfigError>,
    options: Options,
    /// A passphrase asked on the terminal before the checks began.
    passphrase: Option<Secret>,
}

impl Doctor {
    /// Loads the configuration as every command does; a bad one becomes a
    /// Configuration finding instead of an error.
    pub fn new(load: LoadOptions, mut options: Options) -> Doctor {
        let shell = load.shell.iter().cloned().collect();
        let config = mesh_config::load(&load);
        // The sandbox's services are our stand-ins: nothing of the manifest to check.
        if options.sandbox {
            options.services = false;
        }
        Doctor { load, shell, config, options, passphrase: None }
    }

    /// The configuration, when it loaded.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref().ok()
    }

    /// Asks for the key's passphrase now, on the terminal, when the key is
    /// encrypted and neither `BASTION_KEY_PASSPHRASE` nor the agent can open it.
    /// Call it before showing a spinner: the checks themselves never prompt.
    pub fn ask_passphrase(&mut self) -> bool {
        if !self.options.interactive || self.options.quick || self.options.tunnel.is_some() {
            return false;
        }
        let Some(path) = checks::key::needs_prompt(self.config(), &self.shell) else {
            return false;
        };
        let prompt = format!("Enter passphrase for key '{}': ", path.display());
        match rpassword::prompt_password(prompt) {
            Ok(text) => {
                self.passphrase = Some(Secret::new(text));
                true
            }
            Err(_) => false,
        }
    }

    /// Runs every check the options ask for.
    pub async fn run(&self) -> Report {
        let started = Instant::now();
        let root = self.load.root.clone();
        let env = Env::new(&root, &self.load.env_files, self.config(), &self.shell, &self.options);
        let deadline = self.options.deadline();
        let run = checks::run_all(&env, &self.config, self.passphrase.as_ref());
        let (categories, session) = match tokio::time::timeout(deadline, run).await {
            Ok(done) => done,
            Err(_) => (checks::out_of_time(deadline), None),
        };
        let mut report = Report::new(categories, started.elapsed());
        report.session = session.or_else(|| self.options.tunnel.clone());
        report
    }
}

/// Runs the full doctor (see [`Doctor::run`]).
pub async fn run(load: LoadOptions, options: Options) -> Report {
    Doctor::new(load, options).run().await
}

/// The local checks `dev` runs before starting anything: configuration, tools,
/// the SSH key, the local ports and the services; no network. A `[✗]` here
/// should stop `dev` with its fixes.
pub async fn quick(load: LoadOptions, mut options: Options) -> Report {
    options.quick = true;
    Doctor::new(load, options).run().await
}

/// [`run`] on a runtime of its own, for callers that have none.
pub fn run_blocking(doctor: &Doctor) -> std::io::Result<Report> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    Ok(runtime.block_on(doctor.run()))
}
