//! Tools: `redis-cli`, `aws` and `ssh` with their versions, and the Go
//! toolchain at the version the services' modules ask for when services will
//! run; each missing one with its install command for this system.

use std::time::Instant;

use crate::checks::services;
use crate::env::{install_hint, is_root, Env};
use crate::fix::Fix;
use crate::{Category, CategoryReport, Check, Severity};

/// How much a missing tool matters to the workflow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The workflow cannot run without it.
    Required,
    /// Worth having (debugging by hand, the AWS checks).
    Recommended,
    /// Nothing here uses it.
    Optional,
}

pub(crate) async fn check(env: &Env<'_>) -> CategoryReport {
    let go = go_need(env);
    let aws = async {
        if env.sandbox_config() {
            Check::skip("aws", "not needed for the sandbox")
        } else {
            tool(env, "aws", &["--version"], Need::Recommended, "the AWS checks need it").await
        }
    };
    let (redis_cli, aws, ssh, go) = tokio::join!(
        tool(env, "redis-cli", &["--version"], Need::Recommended, "handy to inspect Redis by hand"),
        aws,
        tool(env, "ssh", &["-V"], Need::Optional, "optional: the tunnel does not need it"),
        go_check(env, go),
    );
    let checks = vec![redis_cli, aws, ssh, go];
    let summary: Vec<String> = checks
        .iter()
        .filter(|c| c.severity == Severity::Ok && !c.message.starts_with("not "))
        .map(|c| format!("{} {}", c.name, short_version(&c.message)))
        .collect();
    let summary = if summary.is_empty() { "none found".to_string() } else { summary.join(", ") };
    CategoryReport::new(Category::Tools, summary, checks)
}

/// Runs `binary args` for its version; a missing binary is a finding with the install command.
async fn tool(env: &Env<'_>, binary: &str, args: &[&str], need: Need, why: &str) -> Check {
    let started = Instant::now();
    let Some(path) = env.which(binary) else {
        return missing(env, binary, need, why).took(started.elapsed());
    };
    let check = match env.run(&path, args, env.options.timeout).await {
        Ok(out) if out.success => {
            let text = if out.stdout.trim().is_empty() { out.stderr } else { out.stdout };
            Check::ok(binary, first_line(&text))
        }
        Ok(out) => {
            let detail = first_line(&format!("{}{}", out.stderr, out.stdout));
            let message = format!(
                "{} is installed but `{binary} {}` failed: {detail}",
                path.display(),
                args.join(" ")
            );
            let fix = format!("reinstall it: {}", install_hint(env, binary).0);
            Check::problem(need == Need::Required, binary, message, fix)
        }
        Err(e) => {
            let message =
                format!("{} is installed but `{binary} {}`: {e}", path.display(), args.join(" "));
            let fix = format!("check it by hand, or reinstall it: {}", install_hint(env, binary).0);
            Check::problem(need == Need::Required, binary, message, fix)
        }
    };
    check.took(started.elapsed())
}

fn missing(env: &Env<'_>, binary: &str, need: Need, why: &str) -> Check {
    if need == Need::Optional {
        return Check::ok(binary, format!("not installed ({why})"));
    }
    let (hint, apt_package) = install_hint(env, binary);
    let message = format!("`{binary}` is not on PATH ({why})");
    let check = Check::problem(need == Need::Required, binary, message, hint);
    match apt_package {
        Some(package) if is_root() => {
            check.with_auto_fix(Fix::AptInstall { packages: vec![package.to_string()] })
        }
        _ => check,
    }
}

/// The Go version the manifest's modules ask for, when services will run and run `go`.
fn go_need(env: &Env<'_>) -> Option<Option<(u32, u32)>> {
    if !env.options.services || env.stand_ins() {
        return None;
    }
    services::go_requirement(env)
}

async fn go_check(env: &Env<'_>, need: Option<Option<(u32, u32)>>) -> Check {
    let Some(wanted) = need else {
        return Check::skip("go", "not needed: no service runs `go` (or services will not run)");
    };
    let why = match wanted {
        Some((major, minor)) => format!("the services' go.mod asks for go {major}.{minor}"),
        None => "the service manifest runs `go`".to_string(),
    };
    let started = Instant::now();
    let found = tool(env, "go", &["version"], Need::Required, &why).await;
    if found.severity != Severity::Ok {
        return found;
    }
    let Some(wanted) = wanted else { return found };
    let Some(have) = parse_go_version(&found.message) else { return found };
    if have >= wanted {
        return found;
    }
    let message = format!(
        "{} is older than go {}.{}, which the services' go.mod asks for",
        found.message, wanted.0, wanted.1
    );
    // Go 1.21 and later fetch the toolchain a module asks for by themselves.
    let blocks = have < (1, 21);
    let fix =
        format!("install go {}.{} or later: {}", wanted.0, wanted.1, install_hint(env, "go").0);
    Check::problem(blocks, "go", message, fix).took(started.elapsed())
}

/// `go version go1.22.3 linux/amd64` → (1, 22).
pub(crate) fn parse_go_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().find_map(|w| {
        w.strip_prefix("go").filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    parse_major_minor(word)
}

/// `1.22.3`, `1.22`, `1.22rc1` → (1, 22).
pub(crate) fn parse_major_minor(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string()
}

/// The version-looking word of a `--version` line, for the category summary.
fn short_version(line: &str) -> String {
    line.split(|c: char| c.is_whitespace() || c == '/' || c == '_' || c == ',')
        .find(|w| w.trim_start_matches(['v', 'g', 'o']).starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| w.trim_start_matches("go").to_string())
        .unwrap_or_else(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_read_from_go_version_and_go_mod() {
        assert_eq!(parse_go_version("go version go1.22.3 linux/amd64"), Some((1, 22)));
        assert_eq!(parse_major_minor("1.21"), Some((1, 21)));
        assert_eq!(parse_major_minor("1.23rc1"), Some((1, 23)));
        assert_eq!(parse_go_version("no go here"), None);
    }

    #[test]
    fn summaries_keep_only_the_version() {
        assert_eq!(short_version("redis-cli 7.0.15"), "7.0.15");
        assert_eq!(short_version("aws-cli/1.46.3 Python/3.11.7 Linux/6.1"), "1.46.3");
        assert_eq!(short_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15"), "9.2p1");
        assert_eq!(short_version("go version go1.22.3 linux/amd64"), "1.22.3");
    }
}
