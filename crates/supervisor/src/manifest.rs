//! The service manifest: a TOML file a team edits to say which services run,
//! how, in what order and when each one is ready. Loading reads, interpolates
//! and validates it in one step, so a bad file fails before anything starts.

use crate::interpolate::{expand, TemplateError};
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The manifest's usual name, at the workspace root.
pub const DEFAULT_MANIFEST_FILE: &str = "services.toml";

/// A loaded manifest: every service interpolated and validated, in start order.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from; every error names it.
    pub path: PathBuf,
    /// Dependencies before their dependents (ties broken by name).
    services: Vec<Service>,
}

/// One service, ready to launch.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub program: Program,
    /// Absolute, or relative to the manifest's directory when written so.
    pub cwd: PathBuf,
    /// Set on top of the inherited environment and the caller's variables:
    /// the manifest's top-level `[env]`, overridden by the service's own.
    pub env: BTreeMap<String, String>,
    /// Dotenv files read at each start, before `env` (which wins).
    pub env_files: Vec<PathBuf>,
    pub depends_on: Vec<Dependency>,
    pub ready: Option<Probe>,
    pub restart: Restart,
    pub stop_signal: Signal,
    pub stop_grace: Duration,
    /// The port the service listens on, checked to be free before it starts.
    pub port: Option<u16>,
    /// Variables (name, value) the `cwd` and `env_files` paths came from, for hints.
    pub(crate) path_vars: Vec<(String, String)>,
}

/// What runs: an argv, or a shell line run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    Argv(Vec<String>),
    Shell(String),
}

impl Program {
    /// The full argv, `sh -c LINE` for a shell line.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Program::Argv(argv) => argv.clone(),
            Program::Shell(line) => vec!["sh".into(), "-c".into(), line.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

/// When a dependent may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// As soon as the dependency's process runs.
    Started,
    /// Once the dependency's readiness probe passed (or it started, without one).
    Ready,
}

/// A readiness probe: `check` is tried every `interval`, each try bounded by
/// `timeout`; after `retries` failed tries the service is declared not ready.
/// A `log_line` check waits `interval * retries` in all.
#[derive(Debug, Clone)]
pub struct Probe {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone)]
pub enum Check {
    Http(HttpCheck),
    /// `host:port` accepting a TCP connection.
    Tcp(String),
    /// An argv run in the service's directory and environment; exit 0 is ready.
    Command(Vec<String>),
    LogLine(LinePattern),
}

/// `GET url` answering `status`, with `body_contains` in the body when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub status: u16,
    pub body_contains: Option<String>,
}

/// Text a log line must contain, or a regular expression it must match.
#[derive(Debug, Clone)]
pub struct LinePattern {
    pub text: String,
    regex: Option<regex_lite::Regex>,
}

impl LinePattern {
    pub fn new(text: &str) -> Self {
        LinePattern { text: text.to_string(), regex: regex_lite::Regex::new(text).ok() }
    }

    /// True when the line contains the text, or matches it read as a regex.
    pub fn matches(&self, line: &str) -> bool {
        line.contains(&self.text) || self.regex.as_ref().is_some_and(|re| re.is_match(line))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Never,
    /// Restart after a non-zero exit, at most `max` times in a row, waiting
    /// 1 s, 2 s, 4 s ... capped at `backoff_max`.
    OnFailure {
        max: u32,
        backoff_max: Duration,
    },
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "could not read the service manifest {}: {source}; check the path (the default is \
         `services.toml` at the workspace root)",
        path.display()
    )]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, service: Option<String>, message: String },
    #[error("{}: service `{service}`, `{key}`: {problem}; {fix}", path.display())]
    Invalid { path: PathBuf, service: String, key: String, problem: String, fix: String },
    #[error(
        "{}: service `{service}`, `{key}` uses `${{{name}}}`, which is not set; {}",
        path.display(),
        how_to_set(name)
    )]
    Undefined { path: PathBuf, service: String, key: String, name: String },
    #[error(
        "{}: `depends_on` forms a cycle: {}; remove one of these dependencies",
        path.display(),
        cycle.join(" -> ")
    )]
    Cycle { path: PathBuf, cycle: Vec<String> },
    #[error(
        "{}: no services defined; add a `[services.NAME]` table with a `command`",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "no service `{name}` in {}{}; the services are: {}",
        path.display(),
        suggest(suggestion),
        known.join(", ")
    )]
    UnknownService { path: PathBuf, name: String, suggestion: Option<String>, known: Vec<String> },
}

/// The next step for an unset variable; MESH_ROOT gets its own, being the
/// one every new developer meets first.
fn how_to_set(name: &str) -> String {
    if name == "MESH_ROOT" {
        return "set MESH_ROOT to your checkout of the platform (the directory holding `apps/`) \
                in .env.local or the shell, e.g. `MESH_ROOT=$HOME/src/developer-mesh`"
            .to_string();
    }
    format!("set {name} in .env.local or the shell, or give a fallback with `${{{name}:-value}}`")
}

fn suggest(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
}

/// A `cwd` or env file that is missing, found by [`check_paths`].
#[derive(Debug, thiserror::Error)]
#[error("service `{service}`: {what} {} does not exist{hint}", path.display())]
pub struct PathError {
    pub service: String,
    /// "working directory" or "env file".
    pub what: &'static str,
    pub path: PathBuf,
    hint: String,
}

impl Manifest {
    /// Reads, interpolates and validates the manifest at `path`. `${VAR}` takes
    /// its value from `vars` first, then from this process's environment.
    pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        Manifest::parse(&text, path, vars)
    }

    /// Like [`Manifest::load`], from text already read; `path` names it in errors
    /// and anchors relative paths.
    pub fn parse(
        text: &str,
        path: &Path,
        vars: &BTreeMap<String, String>,
    ) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|err| syntax(path, text, &err))?;
        let shared_env = raw.env;
        if raw.services.is_empty() {
            return Err(ManifestError::Empty { path: path.to_path_buf() });
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let lookup = |name: &str| vars.get(name).cloned().or_else(|| std::env::var(name).ok());
        let mut services = Vec::new();
        for (name, mut raw) in raw.services {
            for (key, value) in &shared_env {
                raw.env.entry(key.clone()).or_insert_with(|| value.clone());
            }
            let ctx = Ctx { path, service: &name, lookup: &lookup };
            services.push(ctx.service(raw, &base)?);
        }
        let order = start_order(path, &services)?;
        let mut slots: Vec<Option<Service>> = services.into_iter().map(Some).collect();
        let services = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(Manifest { path: path.to_path_buf(), services })
    }

    /// Every service, dependencies before their dependents.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The services to run for `only` (all when empty) plus everything they
    /// depend on, as indexes into [`Manifest::services`], in start order.
    pub fn select(&self, only: &[String]) -> Result<Vec<usize>, ManifestError> {
        if only.is_empty() {
            return Ok((0..self.services.len()).collect());
        }
        let mut wanted = BTreeSet::new();
        let mut stack: Vec<&str> = Vec::new();
        for name in only {
            if self.service(name).is_none() {
                return Err(self.unknown_service(name));
            }
            stack.push(name);
        }
        while let Some(name) = stack.pop() {
            if wanted.insert(name.to_string()) {
                let service = self.service(name).expect("validated at load");
                stack.extend(service.depends_on.iter().map(|d| d.service.as_str()));
            }
        }
        Ok((0..self.services.len()).filter(|&i| wanted.contains(&self.services[i].name)).collect())
    }

    /// Every program the manifest runs (argv[0], `sh` for shell lines, probe
    /// commands), for a doctor check that they are installed.
    pub fn required_programs(&self) -> BTreeSet<String> {
        let mut programs = BTreeSet::new();
        for service in &self.services {
            programs.extend(service.program.argv().into_iter().next());
            if let Some(Probe { check: Check::Command(argv), .. }) = &service.ready {
                programs.extend(argv.first().cloned());
            }
        }
        programs
    }

    fn unknown_service(&self, name: &str) -> ManifestError {
        let known: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
        ManifestError::UnknownService {
            path: self.path.clone(),
            name: name.to_string(),
            suggestion: closest(name, known.iter().map(String::as_str)),
            known,
        }
    }
}

/// Checks that every service's working directory and env files exist, so `dev`
/// fails before starting anything; a path built from `MESH_ROOT` says how to
/// point it at the platform checkout.
pub fn check_paths(manifest: &Manifest) -> Result<(), PathError> {
    check_selected_paths(manifest, &manifest.select(&[]).expect("all services"))
}

/// [`check_paths`] for the services [`Manifest::select`] chose (for `--only`).
pub fn check_selected_paths(manifest: &Manifest, selected: &[usize]) -> Result<(), PathError> {
    for service in selected.iter().map(|&i| &manifest.services[i]) {
        let missing = if !service.cwd.is_dir() {
            Some(("working directory", &service.cwd))
        } else {
            service.env_files.iter().find(|f| !f.is_file()).map(|f| ("env file", f))
        };
        if let Some((what, path)) = missing {
            return Err(PathError {
                service: service.name.clone(),
                what,
                path: path.clone(),
                hint: path_hint(&manifest.path, &service.path_vars),
            });
        }
    }
    Ok(())
}

fn path_hint(manifest: &Path, vars: &[(String, String)]) -> String {
    if let Some((_, value)) = vars.iter().find(|(name, _)| name == "MESH_ROOT") {
        return format!(
            "; it is built from MESH_ROOT={value} in {}: point MESH_ROOT at your checkout of \
             the platform (the directory holding `apps/`), in .env.local or the shell, e.g. \
             `MESH_ROOT=$HOME/src/developer-mesh`",
            manifest.display()
        );
    }
    if vars.is_empty() {
        return format!("; create it or fix the path in {}", manifest.display());
    }
    let list: Vec<String> = vars.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!("; it is built from {} in {}: check those values", list.join(", "), manifest.display())
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    /// Variables every service gets; a service's own `env` wins.
    #[serde(default)]
    env: BTreeMap<String, toml::Value>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    command: Option<toml::Value>,
    shell: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, toml::Value>,
    #[serde(default)]
    env_files: Vec<String>,
    #[serde(default)]
    depends_on: Vec<toml::Value>,
    ready: Option<RawProbe>,
    restart: Option<toml::Value>,
    stop_signal: Option<String>,
    stop_grace: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    http: Option<String>,
    status: Option<u16>,
    body_contains: Option<String>,
    tcp: Option<String>,
    command: Option<Vec<String>>,
    log_line: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
}

/// Every key the manifest knows, for "did you mean" on an unknown one.
const KNOWN_KEYS: &[&str] = &[
    "services",
    "command",
    "shell",
    "cwd",
    "env",
    "env_files",
    "depends_on",
    "ready",
    "restart",
    "stop_signal",
    "stop_grace",
    "port",
    "http",
    "status",
    "body_contains",
    "tcp",
    "log_line",
    "interval",
    "timeout",
    "retries",
    "service",
    "condition",
    "on_failure",
    "max",
    "backoff_max",
];

fn syntax(path: &Path, text: &str, err: &toml::de::Error) -> ManifestError {
    let service = err.span().and_then(|span| enclosing_service(&text[..span.start]));
    let mut message = err.to_string().trim_end().to_string();
    if let Some(service) = &service {
        message = format!("in service `{service}`: {message}");
    }
    if let Some(unknown) = message.split("unknown field `").nth(1).and_then(|s| s.split('`').next())
    {
        if let Some(best) = closest(unknown, KNOWN_KEYS.iter().copied()) {
            message.push_str(&format!("\ndid you mean `{best}`?"));
        }
    }
    ManifestError::Syntax { path: path.to_path_buf(), service, message }
}

/// The service whose `[services.NAME...]` table the text before an error ends in.
fn enclosing_service(before: &str) -> Option<String> {
    let line = before.lines().rev().find(|line| line.trim_start().starts_with('['))?;
    let header = line.trim().trim_start_matches('[');
    let rest = header.strip_prefix("services.")?;
    let name = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split(['.', ']']).next()?,
    };
    Some(name.trim().to_string())
}

/// A TOML value in an error message.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(n) => n.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// The candidate a mistyped name most likely meant: an edit or two away, or
/// sharing most of its letters in order.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let edits_allowed = (name.chars().count() / 4).max(1);
    candidates
        .map(|c| (strsim::damerau_levenshtein(name, c), strsim::jaro_winkler(name, c), c))
        .filter(|(edits, similarity, _)| *edits <= edits_allowed || *similarity >= 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c.to_string())
}

// ---------------------------------------------------------------------------
// Validation of one service.

/// The context every error of one service carries.
struct Ctx<'a> {
    path: &'a Path,
    service: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn invalid(
        &self,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.to_path_buf(),
            service: self.service.to_string(),
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Interpolates one value, returning it and the variables it used.
    fn expand(&self, key: &str, template: &str) -> Result<(String, Vec<String>), ManifestError> {
        let mut used = Vec::new();
        match expand(template, self.lookup, &mut used) {
            Ok(value) => Ok((value, used)),
            Err(TemplateError::Undefined(name)) => Err(ManifestError::Undefined {
                path: self.path.to_path_buf(),
                service: self.service.to_string(),
                key: key.to_string(),
                name,
            }),
            Err(TemplateError::Unclosed) => {
                Err(self.invalid(key, format!("`{template}` has a `${{` without `}}`"), "close it"))
            }
            Err(TemplateError::BadName(name)) => Err(self.invalid(
                key,
                format!("`${{{name}}}` is not a variable name"),
                "use letters, digits and `_`, not starting with a digit",
            )),
            Err(TemplateError::StrayDollar) => Err(self.invalid(
                key,
                format!("`{template}` has a `$` that starts no variable"),
                "write `$$` for a literal dollar sign",
            )),
        }
    }

    /// Interpolates an argv word or shell line, refusing secrets: an argv is
    /// visible to every user of the machine in the process list.
    fn expand_argv(&self, key: &str, template: &str) -> Result<String, ManifestError> {
        let (value, used) = self.expand(key, template)?;
        if let Some(secret) = used.iter().find(|name| mesh_config::looks_secret(name)) {
            return Err(self.invalid(
                key,
                format!("`${{{secret}}}` is a secret and would show in the process list"),
                format!(
                    "pass it through `env` instead (`env = {{ {secret} = \"${{{secret}}}\" }}`)"
                ),
            ));
        }
        Ok(value)
    }

    fn duration(
        &self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ManifestError> {
        let Some(raw) = raw else { return Ok(default) };
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if !d.is_zero() || key == "stop_grace" => Ok(d),
            Ok(_) => {
                Err(self.invalid(key, "a zero duration", "give a positive one, e.g. \"500ms\""))
            }
            Err(_) => Err(self.invalid(
                key,
                format!("`{raw}` is not a duration"),
                "write it like \"500ms\", \"30s\" or \"2m\"",
            )),
        }
    }

    fn service(&self, raw: RawService, base: &Path) -> Result<Service, ManifestError> {
        let program = self.program(raw.command, raw.shell)?;
        let mut path_vars = Vec::new();
        let cwd = match &raw.cwd {
            Some(template) => self.path_value("cwd", template, base, &mut path_vars)?,
            None => base.to_path_buf(),
        };
        let env_files = raw
            .env_files
            .iter()
            .map(|t| self.path_value("env_files", t, base, &mut path_vars))
            .collect::<Result<_, _>>()?;
        let mut env = BTreeMap::new();
        for (name, value) in raw.env {
            env.insert(name.clone(), self.env_value(&name, value)?);
        }
        let depends_on =
            raw.depends_on.iter().map(|d| self.dependency(d)).collect::<Result<_, _>>()?;
        let ready = raw.ready.map(|p| self.probe(p)).transpose()?;
        let restart = raw.restart.map(|r| self.restart(&r)).transpose()?.unwrap_or(Restart::Never);
        let stop_signal = match raw.stop_signal {
            Some(name) => self.signal(&name)?,
            None => Signal::SIGTERM,
        };
        let stop_grace =
            self.duration("stop_grace", raw.stop_grace.as_deref(), Duration::from_secs(10))?;
        Ok(Service {
            name: self.service.to_string(),
            program,
            cwd,
            env,
            env_files,
            depends_on,
            ready,
            restart,
            stop_signal,
            stop_grace,
            port: raw.port,
            path_vars,
        })
    }

    fn program(
        &self,
        command: Option<toml::Value>,
        shell: Option<String>,
    ) -> Result<Program, ManifestError> {
        match (command, shell) {
            (Some(_), Some(_)) => Err(self.invalid(
                "command",
                "both `command` and `shell` are set",
                "keep one: `command` for an argv, `shell` for a line run with `sh -c`",
            )),
            (None, None) => Err(self.invalid(
                "command",
                "no command",
                "add `command = [\"program\", \"arg\"]` or `shell = \"a shell line\"`",
            )),
            (None, Some(line)) => Ok(Program::Shell(self.expand_argv("shell", &line)?)),
            (Some(toml::Value::String(line)), None) => Err(self.invalid(
                "command",
                format!("`command` is a string (`{line}`)"),
                "write it as an argv array, `command = [\"go\", \"run\", \".\"]`, or use \
                 `shell = \"...\"` for a shell line",
            )),
            (Some(toml::Value::Array(words)), None) => {
                let mut argv = Vec::new();
                for word in &words {
                    let toml::Value::String(word) = word else {
                        return Err(self.invalid(
                            "command",
                            "a word is not a string",
                            "quote every word",
                        ));
                    };
                    argv.push(self.expand_argv("command", word)?);
                }
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(self.invalid(
                        "command",
                        "the argv is empty",
                        "name the program first",
                    ));
                }
                Ok(Program::Argv(argv))
            }
            (Some(_), None) => Err(self.invalid(
                "command",
                "`command` is not an array of strings",
                "write it like `command = [\"go\", \"run\", \"./cmd/api\"]`",
            )),
        }
    }

    fn path_value(
        &self,
        key: &str,
        template: &str,
        base: &Path,
        path_vars: &mut Vec<(String, String)>,
    ) -> Result<PathBuf, ManifestError> {
        let (value, used) = self.expand(key, template)?;
        for name in used {
            if !mesh_config::looks_secret(&name) && !path_vars.iter().any(|(n, _)| *n == name) {
                let shown = (self.lookup)(&name).unwrap_or_default();
                path_vars.push((name, shown));
            }
        }
        if value.is_empty() {
            return Err(self.invalid(key, format!("`{template}` is empty"), "give a directory"));
        }
        Ok(base.join(value))
    }

    fn env_value(&self, name: &str, value: toml::Value) -> Result<String, ManifestError> {
        let key = format!("env.{name}");
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(self.invalid(&key, "not a variable name", "use letters, digits and `_`"));
        }
        match value {
            toml::Value::String(template) => Ok(self.expand(&key, &template)?.0),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(n) => Ok(n.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(self.invalid(&key, "not a string, number or boolean", "quote the value")),
        }
    }

    fn dependency(&self, value: &toml::Value) -> Result<Dependency, ManifestError> {
        let fix = "write `depends_on = [\"rest-api\"]` or \
                   `depends_on = [{ service = \"rest-api\", condition = \"ready\" }]`";
        match value {
            toml::Value::String(service) => {
                Ok(Dependency { service: service.clone(), condition: Condition::Ready })
            }
            toml::Value::Table(table) => {
                if let Some(key) = table.keys().find(|k| *k != "service" && *k != "condition") {
                    return Err(self.invalid("depends_on", format!("unknown key `{key}`"), fix));
                }
                let Some(toml::Value::String(service)) = table.get("service") else {
                    return Err(self.invalid("depends_on", "an entry has no `service`", fix));
                };
                let condition = match table.get("condition") {
                    None => Condition::Ready,
                    Some(toml::Value::String(c)) if c == "ready" => Condition::Ready,
                    Some(toml::Value::String(c)) if c == "started" => Condition::Started,
                    Some(other) => {
                        return Err(self.invalid(
                            "depends_on",
                            format!("condition {} is unknown", shown(other)),
                            "use \"ready\" or \"started\"",
                        ))
                    }
                };
                Ok(Dependency { service: service.clone(), condition })
            }
            _ => Err(self.invalid("depends_on", "an entry is neither a name nor a table", fix)),
        }
    }

    fn probe(&self, raw: RawProbe) -> Result<Probe, ManifestError> {
        let kinds =
            [raw.http.is_some(), raw.tcp.is_some(), raw.command.is_some(), raw.log_line.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(self.invalid(
                "ready",
                "a probe needs exactly one of `http`, `tcp`, `command`, `log_line`",
                "e.g. `ready = { http = \"http://127.0.0.1:8081/readyz\", status = 200 }`",
            ));
        }
        if raw.http.is_none() && (raw.status.is_some() || raw.body_contains.is_some()) {
            return Err(self.invalid(
                "ready",
                "`status` and `body_contains` only apply to an `http` probe",
                "remove them or probe with `http`",
            ));
        }
        let check = if let Some(url) = raw.http {
            Check::Http(self.http(&url, raw.status.unwrap_or(200), raw.body_contains)?)
        } else if let Some(addr) = raw.tcp {
            let (addr, _) = self.expand("ready.tcp", &addr)?;
            if !addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Err(self.invalid(
                    "ready.tcp",
                    format!("`{addr}` is not HOST:PORT"),
                    "e.g. \"127.0.0.1:8080\"",
                ));
            }
            Check::Tcp(addr)
        } else if let Some(words) = raw.command {
            let argv: Vec<String> = words
                .iter()
                .map(|w| self.expand_argv("ready.command", w))
                .collect::<Result<_, _>>()?;
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(self.invalid(
                    "ready.command",
                    "the argv is empty",
                    "name the program first",
                ));
            }
            Check::Command(argv)
        } else {
            let (text, _) =
                self.expand("ready.log_line", raw.log_line.as_deref().unwrap_or_default())?;
            if text.is_empty() {
                return Err(self.invalid(
                    "ready.log_line",
                    "the text is empty",
                    "give a phrase the service prints when ready",
                ));
            }
            Check::LogLine(LinePattern::new(&text))
        };
        Ok(Probe {
            check,
            interval: self.duration(
                "ready.interval",
                raw.interval.as_deref(),
                Duration::from_secs(1),
            )?,
            timeout: self.duration(
                "ready.timeout",
                raw.timeout.as_deref(),
                Duration::from_secs(2),
            )?,
            retries: raw.retries.unwrap_or(60).max(1),
        })
    }

    fn http(
        &self,
        template: &str,
        status: u16,
        body_contains: Option<String>,
    ) -> Result<HttpCheck, ManifestError> {
        let (url, _) = self.expand("ready.http", template)?;
        let bad = |problem: String| {
            self.invalid("ready.http", problem, "write it like \"http://127.0.0.1:8081/readyz\"")
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(bad(format!("`{url}` is not a plain http:// URL (https is not probed)")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, tail) =
                v6.split_once(']').ok_or_else(|| bad(format!("`{url}` has an open `[`")))?;
            (host, tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad(format!("`{url}` has a bad port")))?,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad(format!("`{url}` has no host")));
        }
        let body_contains = body_contains
            .map(|b| self.expand("ready.body_contains", &b).map(|v| v.0))
            .transpose()?;
        Ok(HttpCheck {
            url: url.clone(),
            host: host.to_string(),
            port,
            path: path.to_string(),
            status,
            body_contains,
        })
    }

    fn restart(&self, value: &toml::Value) -> Result<Restart, ManifestError> {
        let fix = "write `restart = \"never\"` or \
                   `restart = { on_failure = { max = 3, backoff_max = \"30s\" } }`";
        let defaults = (3, Duration::from_secs(30));
        match value {
            toml::Value::String(s) if s == "never" => Ok(Restart::Never),
            toml::Value::String(s) if s == "on_failure" || s == "on-failure" => {
                Ok(Restart::OnFailure { max: defaults.0, backoff_max: defaults.1 })
            }
            toml::Value::Table(table) if table.len() == 1 => {
                let Some(toml::Value::Table(policy)) = table.get("on_failure") else {
                    return Err(self.invalid("restart", "unknown policy", fix));
                };
                if let Some(key) = policy.keys().find(|k| *k != "max" && *k != "backoff_max") {
                    return Err(self.invalid(
                        "restart.on_failure",
                        format!("unknown key `{key}`"),
                        fix,
                    ));
                }
                let max = match policy.get("max") {
                    None => defaults.0,
                    Some(toml::Value::Integer(n)) if (0..=1000).contains(n) => *n as u32,
                    Some(other) => {
                        return Err(self.invalid(
                            "restart.on_failure.max",
                            format!("{} is not a count", shown(other)),
                            "give 0 to 1000",
                        ))
                    }
                };
                let backoff_max = match policy.get("backoff_max") {
                    None => defaults.1,
                    Some(toml::Value::String(s)) => {
                        self.duration("restart.on_failure.backoff_max", Some(s), defaults.1)?
                    }
                    Some(other) => {
                        return Err(self.invalid(
                            "restart.on_failure.backoff_max",
                            format!("{} is not a duration", shown(other)),
                            "write it like \"30s\"",
                        ))
                    }
                };
                Ok(Restart::OnFailure { max, backoff_max })
            }
            _ => Err(self.invalid(
                "restart",
                format!("{} is not a restart policy", shown(value)),
                fix,
            )),
        }
    }

    fn signal(&self, name: &str) -> Result<Signal, ManifestError> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        Signal::from_str(&full).map_err(|_| {
            self.invalid(
                "stop_signal",
                format!("`{name}` is not a signal"),
                "use TERM, INT, HUP, QUIT, USR1 or USR2",
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Dependency order.

/// Indexes of `services` in start order; an unknown dependency or a cycle is an error.
fn start_order(path: &Path, services: &[Service]) -> Result<Vec<usize>, ManifestError> {
    let index: BTreeMap<&str, usize> =
        services.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    for service in services {
        for dep in &service.depends_on {
            if !index.contains_key(dep.service.as_str()) {
                let suggestion = closest(&dep.service, index.keys().copied());
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    service: service.name.clone(),
                    key: "depends_on".into(),
                    problem: format!(
                        "there is no service `{}`{}",
                        dep.service,
                        suggest(&suggestion)
                    ),
                    fix: format!(
                        "depend on one of: {}",
                        index.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            if dep.service == service.name {
                return Err(ManifestError::Cycle {
                    path: path.to_path_buf(),
                    cycle: vec![service.name.clone(); 2],
                });
            }
        }
    }

    // Depth-first, dependencies first; a node met again while still on the
    // stack closes a cycle, which is reported from its first occurrence.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        i: usize,
        services: &[Service],
        index: &BTreeMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<String>> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Open => {
                let from = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[from..].iter().map(|&s| services[s].name.clone()).collect();
                cycle.push(services[i].name.clone());
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[i] = Mark::Open;
        stack.push(i);
        for dep in &services[i].depends_on {
            visit(index[dep.service.as_str()], services, index, marks, stack, order)?;
        }
        stack.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }

    let mut marks = vec![Mark::New; services.len()];
    let mut order = Vec::with_capacity(services.len());
    for &i in index.values() {
        visit(i, services, &index, &mut marks, &mut Vec::new(), &mut order)
            .map_err(|cycle| ManifestError::Cycle { path: path.to_path_buf(), cycle })?;
    }
    Ok(order)
}
