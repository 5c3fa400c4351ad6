//! What every subcommand is handed: the workspace root, the global flags and
//! the output settings, and a way to load the configuration.

use crate::output::{ColorChoice, Output};
use anyhow::Context as _;
use std::path::PathBuf;

/// Flags every subcommand accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Read this env file instead of .env and .env.local (repeatable; later files win).
    #[arg(long = "env-file", value_name = "PATH", global = true)]
    pub env_files: Vec<PathBuf>,
    /// Set a variable, winning over the shell and every file (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", global = true, value_parser = parse_assignment)]
    pub set: Vec<(String, String)>,
    /// Print results as JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log more (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Colour the output: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
}

fn parse_assignment(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{raw}` is not NAME=VALUE: write it as --set REDIS_TUNNEL_PORT=6380")),
    }
}

/// A flag's parser for a whole number from `min` to `max`, for counts and durations where 0
/// (or an absurd size) makes no sense; clap's error names the flag, this the range.
pub fn number_in<T: TryFrom<u64>>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |raw| {
        let range = format!("use a whole number from {min} to {max}");
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => T::try_from(n).map_err(|_| range),
            Ok(n) => Err(format!("{n} is out of range: {range}")),
            Err(_) => Err(format!("`{raw}` is not a whole number: {range}")),
        }
    }
}

/// A flag's parser for a number of seconds above 0 and at most `max`.
pub fn seconds_up_to(max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |raw| match raw.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= max => Ok(s),
        _ => Err(format!("`{raw}` is out of range: use a number of seconds above 0, up to {max}")),
    }
}

/// A usage error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shared by every subcommand.
pub struct Context {
    /// The workspace root (where `Cargo.toml`, `.env` and `services.toml` live).
    pub root: PathBuf,
    pub cwd: PathBuf,
    pub global: GlobalArgs,
    pub out: Output,
}

impl Context {
    pub fn new(global: GlobalArgs) -> anyhow::Result<Context> {
        let out = Output::new(global.color, global.json, global.quiet);
        init_tracing(global.verbose, global.quiet, out.color);
        let cwd = std::env::current_dir().context("read the current directory")?;
        let root = workspace_root();
        Ok(Context { root, cwd, global, out })
    }

    /// What `mesh_config::load` reads: these env files, this sandbox layer
    /// (empty outside the sandbox), the `--set` flags and the shell.
    pub fn load_options(
        &self,
        env_files: Vec<PathBuf>,
        sandbox: Vec<(String, String)>,
    ) -> mesh_config::LoadOptions {
        mesh_config::LoadOptions {
            root: self.root.clone(),
            cwd: self.cwd.clone(),
            env_files,
            flags: self.global.set.clone(),
            sandbox,
            shell: std::env::vars().collect(),
        }
    }

    /// Loads the configuration and prints its warnings.
    pub fn load(&self, options: &mesh_config::LoadOptions) -> anyhow::Result<mesh_config::Config> {
        let config = mesh_config::load(options)?;
        for finding in &config.warnings {
            self.out.warn(&finding.to_string());
        }
        Ok(config)
    }

    /// Loads the configuration from flags, the shell and the env files.
    pub fn config(&self) -> anyhow::Result<mesh_config::Config> {
        self.load(&self.load_options(self.global.env_files.clone(), Vec::new()))
    }
}

/// The workspace root: cargo tells the alias where the manifest is; fall back
/// to the directory this binary was built from.
fn workspace_root() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().map(PathBuf::from).unwrap_or(xtask_dir)
}

/// Logs to stderr: `-q` errors only, default warnings, `-v` debug, `-vv` trace;
/// `RUST_LOG` (`level` or `target=level,...`) wins over the flags.
fn init_tracing(verbose: u8, quiet: bool, color: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    let mut bad_rust_log = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|err| {
            bad_rust_log = Some(format!(
                "RUST_LOG={spec:?} is not `level` or `target=level,...` ({err}); using {level}"
            ));
            Targets::new().with_default(level)
        }),
        _ => Targets::new().with_default(level),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false);
    let _ = tracing_subscriber::registry().with(fmt).with(filter).try_init();
    if let Some(message) = bad_rust_log {
        tracing::warn!("{message}");
    }
}
