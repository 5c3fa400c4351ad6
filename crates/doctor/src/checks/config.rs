//! Configuration: `.env` found, required values present and valid (the
//! configuration crate's own validation), no value left at `.env.example`'s
//! placeholder, its warnings (the `localhost` and Docker-only host traps), and
//! `.env` ignored by git and not tracked.

use std::path::Path;
use std::time::Duration;

use mesh_config::{Config, ConfigError};

use crate::env::Env;
use crate::fix::Fix;
use crate::{Category, CategoryReport, Check};

pub(crate) async fn check(env: &Env<'_>, config: &Result<Config, ConfigError>) -> CategoryReport {
    let mut checks = vec![env_file(env)];
    let summary = match config {
        Ok(config) => {
            checks.extend(required(env, config));
            let placeholders = placeholders(env, config);
            let names: Vec<String> = placeholders.iter().map(|c| c.name.clone()).collect();
            checks.extend(placeholders);
            checks.extend(config.warnings.iter().map(|finding| {
                let fix = "see the message; `cargo xtask env` shows every value and its source";
                Check::warn(finding.var.clone(), finding.to_string(), fix)
            }));
            let files: Vec<String> = config.files.iter().map(|p| env.show(p)).collect();
            let read = if files.is_empty() {
                "no env file read; values from the shell".to_string()
            } else {
                format!("{} read", files.join(", "))
            };
            if names.is_empty() {
                read
            } else {
                format!("{read}; still .env.example's placeholder: {}", names.join(", "))
            }
        }
        Err(error) => {
            checks.extend(load_error(error));
            "the configuration has errors".to_string()
        }
    };
    checks.extend(git_checks(env).await);
    CategoryReport::new(Category::Configuration, summary, checks)
}

/// `.env` at the workspace root, unless `--env-file` replaced it or the sandbox supplies all.
fn env_file(env: &Env<'_>) -> Check {
    let dotenv = env.root.join(".env");
    let example = env.root.join(".env.example");
    // Known from the command line, so also when a file holds a bad value and nothing loaded.
    if !env.env_files.is_empty() {
        let files: Vec<String> = env.env_files.iter().map(|f| env.show(f)).collect();
        return Check::ok(".env", format!("replaced by --env-file {}", files.join(", ")));
    }
    if dotenv.is_file() {
        return Check::ok(".env", env.show(&dotenv));
    }
    if env.options.sandbox {
        return Check::ok(".env", "none; the sandbox supplies its own values");
    }
    let message = format!("no .env at {}", env.show(env.root));
    if example.is_file() {
        let fix = "copy .env.example to .env and fill in its values: `cp .env.example .env`";
        Check::warn(".env", message, fix)
            .with_auto_fix(Fix::CopyEnvExample { from: example, to: dotenv })
    } else {
        let fix = "create .env at the workspace root with BASTION_HOST_IP and ELASTICACHE_ENDPOINT";
        Check::warn(".env", message, fix)
    }
}

/// The values the real workflow cannot start without.
fn required(env: &Env<'_>, config: &Config) -> Vec<Check> {
    if env.options.sandbox {
        return vec![Check::ok("required values", "supplied by the sandbox")];
    }
    let mut checks = Vec::new();
    if config.redis.is_none() {
        checks.push(missing(
            "ELASTICACHE_ENDPOINT",
            "Redis",
            "my-cache.abc123.cache.amazonaws.com",
        ));
    }
    if !tunnel_turned_off(config) && config.bastion.is_none() {
        checks.push(missing("BASTION_HOST_IP", "the tunnel to Redis", "10.0.1.10"));
    }
    if checks.is_empty() {
        let bastion = config.bastion.as_ref().map(|b| format!("bastion {}:{}", b.host, b.port));
        let redis = config.redis.as_ref().map(|r| format!("endpoint {}:{}", r.host, r.port));
        let found: Vec<String> = bastion.into_iter().chain(redis).collect();
        checks.push(Check::ok("required values", found.join(", ")));
    }
    checks
}

/// The variables whose `.env.example` value stands for the user's own infrastructure, what
/// to put there instead, and whether leaving the example's value blocks the workflow. The
/// values themselves are read from `.env.example` at run time, so the two stay in step.
const PLACEHOLDERS: &[(&str, &str, bool)] = &[
    ("BASTION_HOST_IP", "set your bastion's address (or its ~/.ssh/config Host alias)", true),
    ("ELASTICACHE_ENDPOINT", "set your cache's endpoint (the ElastiCache console shows it)", true),
    ("BASTION_KEY_FILE", "set the private key your bastion accepts", false),
    ("RDS_ENDPOINT", "set your database's endpoint, or remove the line", false),
    ("TUNNEL_EXTRA_FORWARDS", "set your own forwards, or remove the line", false),
];

/// Values still equal to `.env.example`'s placeholders: copied but never edited, they send
/// the tunnel to an address that is not the user's.
fn placeholders(env: &Env<'_>, config: &Config) -> Vec<Check> {
    if env.options.sandbox {
        return Vec::new();
    }
    let example = env.root.join(".env.example");
    let Ok(text) = std::fs::read_to_string(&example) else { return Vec::new() };
    let examples = example_values(&text);
    let mut checks = Vec::new();
    for &(var, what, blocks) in PLACEHOLDERS {
        let (Some(example_value), true) = (examples.get(var), config.is_set(var)) else {
            continue;
        };
        let Some(value) = config.get(var).map(str::trim) else { continue };
        if value != *example_value {
            continue;
        }
        // A key may really be named as in the example: only a missing one is the placeholder.
        let key_exists =
            config.bastion.as_ref().and_then(|b| b.key_file.as_ref()).is_some_and(|k| k.is_file());
        if var == "BASTION_KEY_FILE" && key_exists {
            continue;
        }
        let blocks = blocks && (var != "BASTION_HOST_IP" || !tunnel_turned_off(config));
        let message = format!("{var}={value} is still the example's placeholder: {what}");
        let fix = format!("edit {var} where it is set (`cargo xtask env` shows where)");
        checks.push(Check::problem(blocks, var, message, fix));
    }
    checks
}

/// `NAME=value` of `.env.example`, commented-out examples (`# NAME=value`) included.
fn example_values(text: &str) -> std::collections::BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix('#').map_or(line, str::trim_start);
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            (is_name && !value.trim().is_empty()).then(|| (name, value.trim()))
        })
        .collect()
}

fn missing(var: &str, needed_for: &str, example: &str) -> Check {
    let message = format!("{var} is not set, and {needed_for} needs it");
    let fix = format!(
        "add `{var}={example}` (your value) to .env; .env.example documents every variable"
    );
    Check::fail(var, message, fix)
}

/// True when the user said Redis is reached without the tunnel.
pub(crate) fn tunnel_turned_off(config: &Config) -> bool {
    config.get("USE_SSH_TUNNEL_FOR_REDIS").is_some_and(|v| {
        matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no" | "off")
    })
}

/// Why the tunnel's categories are not checked.
pub(crate) fn no_tunnel_reason(config: &Config) -> &'static str {
    if tunnel_turned_off(config) {
        "not checked: USE_SSH_TUNNEL_FOR_REDIS=false, Redis is reached directly"
    } else {
        "not checked: BASTION_HOST_IP is not set (see Configuration)"
    }
}

/// A configuration that did not load: one `[✗]` per bad value.
fn load_error(error: &ConfigError) -> Vec<Check> {
    match error {
        ConfigError::Invalid { findings, .. } => findings
            .iter()
            .map(|f| {
                Check::fail(f.var.clone(), f.to_string(), "correct the value as the message says")
            })
            .collect(),
        other => {
            vec![Check::fail("configuration", other.to_string(), "correct it as the message says")]
        }
    }
}

/// `.env` and `.env.local` must be ignored by git and not tracked: they hold secrets.
async fn git_checks(env: &Env<'_>) -> Vec<Check> {
    let Some(git) = env.which("git") else { return Vec::new() };
    let timeout = env.options.timeout;
    let mut checks = Vec::new();
    for name in [".env", ".env.local"] {
        if !env.root.join(name).is_file() {
            continue;
        }
        let started = std::time::Instant::now();
        let check = git_check(env, &git, name, timeout).await;
        checks.extend(check.map(|c| c.took(started.elapsed())));
    }
    checks
}

async fn git_check(env: &Env<'_>, git: &Path, name: &str, timeout: Duration) -> Option<Check> {
    let inside = env.run(git, &["rev-parse", "--is-inside-work-tree"], timeout).await.ok()?;
    if !inside.success {
        return None;
    }
    let tracked = env.run(git, &["ls-files", "--error-unmatch", "--", name], timeout).await.ok()?;
    if tracked.success {
        let message = format!("{name} is tracked by git: its secrets are in the history");
        let fix = format!(
            "`git rm --cached {name}` and commit; rotate any secret it held if it was pushed"
        );
        return Some(Check::warn(format!("{name} in git"), message, fix));
    }
    let ignored = env.run(git, &["check-ignore", "-q", "--", name], timeout).await.ok()?;
    if ignored.success {
        return Some(Check::ok(format!("{name} in git"), "ignored, not tracked"));
    }
    let message = format!("{name} is not ignored by git: `git add .` would commit its secrets");
    let gitignore = env.root.join(".gitignore");
    let fix = format!("add the line `{name}` to .gitignore");
    let auto = Fix::GitIgnore { gitignore, entry: name.to_string() };
    Some(Check::warn(format!("{name} in git"), message, fix).with_auto_fix(auto))
}
