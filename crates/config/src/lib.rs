//! Configuration for every command: `.env` files, the shell and flags, layered,
//! validated and normalized, with secrets that never print.
//!
//! Precedence, highest first: `--set` flags, the sandbox's own values, the
//! process environment, `.env.local`, `.env` (or the `--env-file` files, later
//! ones winning), then built-in defaults. Files are read into a map; nothing
//! here ever changes the process environment.

mod dotenv;
mod forward;
mod origin;
mod resolve;
mod secret;
mod vars;

pub use dotenv::{FileEntry, SyntaxError};
pub use forward::Forward;
pub use origin::{Finding, Origin};
pub use resolve::{Bastion, Redis, TunnelSettings};
pub use secret::Secret;
pub use vars::{did_you_mean, looks_secret, Kind, VarSpec, VARS};

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to read and from where.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The workspace root, where `.env` and `.env.local` are looked for.
    pub root: PathBuf,
    /// The directory relative `--env-file` paths are taken from.
    pub cwd: PathBuf,
    /// `--env-file` paths; when non-empty they replace `.env` and `.env.local`.
    pub env_files: Vec<PathBuf>,
    /// `--set NAME=VALUE` pairs.
    pub flags: Vec<(String, String)>,
    /// The sandbox's values; they win over the shell.
    pub sandbox: Vec<(String, String)>,
    /// The process environment, as `std::env::vars()` gives it.
    pub shell: Vec<(String, String)>,
}

/// Failures that stop a command before it starts (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--env-file {}: no such file; check the path (a relative path is taken from {})",
        path.display(),
        cwd.display()
    )]
    EnvFileMissing { path: PathBuf, cwd: PathBuf },
    #[error("--env-file {}: is a directory; name the env file itself", path.display())]
    EnvFileIsDir { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{}: {}", .0.path.display(), .0.line, .0.message)]
    Syntax(SyntaxError),
    /// `partial` is the configuration as far as it could be read, the invalid values
    /// left unresolved: `env` shows it so the user can see what is wrong.
    #[error("{}", findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { findings: Vec<Finding>, partial: Box<Config> },
    #[error(
        "{var} is not set, and {needed_for} needs it: add `{var}=...` to .env \
         (see .env.example for every variable), or export it"
    )]
    Missing { var: &'static str, needed_for: &'static str },
}

/// One effective variable and where its value came from.
#[derive(Clone)]
pub struct Value {
    /// The canonical name (aliases are folded into it).
    pub name: String,
    /// The name as it was written, which may be an older alias.
    pub written_as: String,
    pub raw: String,
    pub origin: Origin,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("name", &self.name)
            .field("written_as", &self.written_as)
            .field("raw", &self.display_value())
            .field("origin", &self.origin)
            .finish()
    }
}

impl Value {
    /// The value as it may be shown: secrets redacted.
    pub fn display_value(&self) -> &str {
        if looks_secret(&self.name) && !self.raw.is_empty() {
            Secret::REDACTED
        } else {
            &self.raw
        }
    }
}

/// A row of `cargo xtask env`.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub value: Option<String>,
    pub source: Option<Origin>,
    pub secret: bool,
    pub alias_used: Option<String>,
    pub documented: bool,
    /// Why `value` is not what was written, when the tool uses something else: a
    /// `rediss://` endpoint turning TLS on, a default standing in for an empty value.
    pub note: Option<String>,
}

/// The loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    values: BTreeMap<String, Value>,
    shell: BTreeMap<String, String>,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
    /// Warnings: near-miss names, duplicates, traps. Errors stop `load` instead.
    pub warnings: Vec<Finding>,
    pub bastion: Option<Bastion>,
    pub redis: Option<Redis>,
    pub tunnel: TunnelSettings,
    pub forwards: Vec<Forward>,
    pub environment: String,
    pub mesh_root: Option<PathBuf>,
    /// Root of per-tunnel state: `XTASK_STATE_DIR`, else the XDG state dir.
    pub state_root: PathBuf,
}

/// Reads every layer, validates, and resolves typed settings.
pub fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let files = files_to_read(options)?;
    let mut layered: BTreeMap<String, Value> = BTreeMap::new();

    for (path, shown) in &files {
        let bytes = std::fs::read(path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            ConfigError::Syntax(SyntaxError {
                path: shown.clone(),
                line,
                message: "is not UTF-8 text: save the file as UTF-8".into(),
            })
        })?;
        let parsed = dotenv::parse(shown, &text).map_err(ConfigError::Syntax)?;
        warnings.extend(parsed.warnings);
        let layer = parsed.entries.into_iter().map(|e| {
            let origin = Origin::File { path: shown.clone(), line: e.line };
            (e.key, e.value, origin)
        });
        merge_layer(&mut layered, layer.collect(), &mut warnings);
    }
    let shell: Vec<_> = options
        .shell
        .iter()
        .filter(|(k, _)| vars::lookup(k).is_some())
        .map(|(k, v)| (k.clone(), v.clone(), Origin::Shell))
        .collect();
    merge_layer(&mut layered, shell, &mut warnings);
    for (pairs, origin) in [(&options.sandbox, Origin::Sandbox), (&options.flags, Origin::Flag)] {
        let layer = pairs.iter().map(|(k, v)| (k.clone(), v.clone(), origin.clone())).collect();
        merge_layer(&mut layered, layer, &mut warnings);
    }

    let shell_map = options.shell.iter().cloned().collect();
    let files = files.into_iter().map(|(path, _)| path).collect();
    resolve::resolve(layered, shell_map, files, warnings)
}

/// `--env-file` paths when given (each must exist), else the root's `.env`
/// and `.env.local` that exist; each with the path shown in messages (as the
/// user wrote it, or relative to the workspace root).
fn files_to_read(options: &LoadOptions) -> Result<Vec<(PathBuf, PathBuf)>, ConfigError> {
    if options.env_files.is_empty() {
        let defaults = [options.root.join(".env"), options.root.join(".env.local")];
        return Ok(defaults
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| (p.clone(), display_path(&p, &options.root)))
            .collect());
    }
    options
        .env_files
        .iter()
        .map(|p| {
            let path = if p.is_absolute() { p.clone() } else { options.cwd.join(p) };
            if path.is_file() {
                Ok((path, p.clone()))
            } else if path.is_dir() {
                Err(ConfigError::EnvFileIsDir { path: p.clone() })
            } else {
                Err(ConfigError::EnvFileMissing { path: p.clone(), cwd: options.cwd.clone() })
            }
        })
        .collect()
}

/// A path as users recognise it: relative to the workspace root when inside it.
fn display_path(path: &Path, root: &Path) -> PathBuf {
    path.strip_prefix(root).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
}

/// Puts one layer over the map. Within a layer, a later duplicate wins and a
/// canonical name wins over its alias; both are reported.
fn merge_layer(
    map: &mut BTreeMap<String, Value>,
    layer: Vec<(String, String, Origin)>,
    warnings: &mut Vec<Finding>,
) {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for (key, raw, origin) in layer {
        let name = vars::lookup(&key).map_or(key.clone(), |spec| spec.name.to_string());
        if vars::lookup(&key).is_none() && !matches!(origin, Origin::Shell) {
            if let Some(suggestion) = vars::did_you_mean(&key) {
                let case = if key.chars().any(|c| c.is_ascii_lowercase()) {
                    " (names are case-sensitive)"
                } else {
                    ""
                };
                warnings.push(Finding {
                    origin: origin.clone(),
                    var: key.clone(),
                    message: format!(
                        "{key} is not a variable this tool reads; did you mean {suggestion}{case}?"
                    ),
                });
            }
        }
        let value = Value { name: name.clone(), written_as: key, raw, origin };
        if let Some(previous) = seen.get(&name) {
            let alias_loses = previous.written_as == name && value.written_as != name;
            let (winner, loser) = if alias_loses { (previous, &value) } else { (&value, previous) };
            warnings.push(Finding {
                origin: winner.origin.clone(),
                var: winner.written_as.clone(),
                message: duplicate_message(loser, winner),
            });
            if alias_loses {
                continue;
            }
        }
        seen.insert(name, value);
    }
    map.extend(seen);
}

fn duplicate_message(loser: &Value, winner: &Value) -> String {
    if loser.written_as == winner.written_as {
        format!(
            "{} is set twice ({} and {}); the value from {} wins: remove the other line",
            winner.written_as, loser.origin, winner.origin, winner.origin
        )
    } else {
        format!(
            "both {} ({}) and {} ({}) are set; {} wins: keep only {}",
            loser.written_as,
            loser.origin,
            winner.written_as,
            winner.origin,
            winner.written_as,
            winner.name
        )
    }
}

impl Config {
    /// The effective value of a variable (canonical name or alias), defaults included.
    pub fn get(&self, name: &str) -> Option<&str> {
        let canonical = vars::lookup(name).map_or(name, |spec| spec.name);
        self.values
            .get(canonical)
            .map(|v| v.raw.as_str())
            .or_else(|| vars::lookup(canonical).and_then(|spec| spec.default))
    }

    /// Whether a variable was given a non-empty value (by a flag, the sandbox,
    /// the shell or a file) rather than left to its default.
    pub fn is_set(&self, name: &str) -> bool {
        let canonical = vars::lookup(name).map_or(name, |spec| spec.name);
        self.values.get(canonical).is_some_and(|v| !v.raw.trim().is_empty())
    }

    /// A variable of the process environment, whatever its name (HOME, PATH, ...).
    pub fn shell_var(&self, name: &str) -> Option<&str> {
        self.shell.get(name).map(String::as_str)
    }

    /// The bastion settings, or the error saying which variable to set.
    pub fn require_bastion(&self) -> Result<&Bastion, ConfigError> {
        self.bastion
            .as_ref()
            .ok_or(ConfigError::Missing { var: "BASTION_HOST_IP", needed_for: "the tunnel" })
    }

    /// The Redis settings, or the error saying which variable to set.
    pub fn require_redis(&self) -> Result<&Redis, ConfigError> {
        self.redis
            .as_ref()
            .ok_or(ConfigError::Missing { var: "ELASTICACHE_ENDPOINT", needed_for: "Redis" })
    }

    /// Every documented variable, then every other one read from a file or flag,
    /// with its effective value (secrets redacted) and source.
    pub fn rows(&self) -> Vec<Row> {
        let documented = VARS.iter().map(|spec| {
            let value = self.values.get(spec.name);
            let mut row = Row {
                name: spec.name.to_string(),
                value: value
                    .map(|v| v.display_value().to_string())
                    .or(spec.default.map(str::to_string)),
                source: value.map(|v| v.origin.clone()).or(spec.default.map(|_| Origin::Default)),
                secret: spec.secret,
                alias_used: value.filter(|v| v.written_as != v.name).map(|v| v.written_as.clone()),
                documented: true,
                note: None,
            };
            self.effective(spec, value, &mut row);
            row
        });
        let others =
            self.values.values().filter(|v| vars::lookup(&v.name).is_none()).map(|v| Row {
                name: v.name.clone(),
                value: Some(v.display_value().to_string()),
                source: Some(v.origin.clone()),
                secret: looks_secret(&v.name),
                alias_used: None,
                documented: false,
                note: None,
            });
        documented.chain(others).collect()
    }

    /// Puts into `row` the value the tool really uses where it differs from what
    /// was written (or not written), with the reason in `note`.
    fn effective(&self, spec: &VarSpec, value: Option<&Value>, row: &mut Row) {
        let blank = value.is_some_and(|v| v.raw.trim().is_empty());
        let unset = value.is_none() || blank;
        let derived = match spec.name {
            "REDIS_TLS_ENABLED" if unset && self.redis.as_ref().is_some_and(|r| r.tls) => {
                let endpoint = self.values.get("ELASTICACHE_ENDPOINT");
                let written = endpoint.map_or("ELASTICACHE_ENDPOINT", |v| v.written_as.as_str());
                row.source = endpoint.map(|v| v.origin.clone());
                Some(("true".to_string(), Some(format!("from rediss:// in {written}"))))
            }
            "USE_SSH_TUNNEL_FOR_REDIS" if unset => {
                let why = if self.bastion.is_some() {
                    "BASTION_HOST_IP is set"
                } else {
                    "BASTION_HOST_IP is not set"
                };
                Some((self.tunnel.enabled.to_string(), Some(why.to_string())))
            }
            // The default depends on XDG_STATE_HOME and HOME: show where it is.
            "XTASK_STATE_DIR" if unset => {
                let note = blank.then(|| "default: the value is empty".to_string());
                Some((self.state_root.display().to_string(), note))
            }
            _ if blank && !spec.secret => Some(match spec.default {
                Some(default) => (default.to_string(), Some("default: the value is empty".into())),
                None => (String::new(), Some("empty: the same as unset".into())),
            }),
            _ => None,
        };
        let Some((effective, note)) = derived else { return };
        if value.is_none() && row.source.is_none() {
            row.source = Some(Origin::Default);
        }
        row.value = Some(effective);
        row.note = note;
    }

    /// Every value read from files, the sandbox and flags (not the shell, which
    /// children inherit anyway), secrets included: for a child's environment only.
    /// The key's passphrase is ours alone and never handed on.
    pub fn child_env(&self) -> BTreeMap<String, String> {
        self.values
            .values()
            .filter(|v| v.origin != Origin::Shell && v.name != "BASTION_KEY_PASSPHRASE")
            .map(|v| (v.name.clone(), v.raw.clone()))
            .collect()
    }
}
