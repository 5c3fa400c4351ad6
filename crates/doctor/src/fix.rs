//! The safe local fixes `--fix` applies, each described before it is done:
//! a key's mode, `.env` in `.gitignore`, `.env` from `.env.example`, a missing
//! tool installed with apt-get.

use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One fix the doctor can apply by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fix {
    /// `chmod 600` a private key that others may read.
    KeyMode { path: PathBuf },
    /// Append an entry (`.env`) to `.gitignore`.
    GitIgnore { gitignore: PathBuf, entry: String },
    /// Copy `.env.example` to a missing `.env`.
    CopyEnvExample { from: PathBuf, to: PathBuf },
    /// `apt-get install -y` the packages (only offered as root, with apt-get).
    AptInstall { packages: Vec<String> },
}

/// Why a fix could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot change the mode of {}: {source}: run `chmod 600 {}` yourself", path.display(), path.display())]
    Chmod { path: PathBuf, source: std::io::Error },
    #[error("cannot append to {}: {source}: add the line `{entry}` yourself", path.display())]
    GitIgnore { path: PathBuf, entry: String, source: std::io::Error },
    #[error("cannot copy {} to {}: {source}: copy it yourself", from.display(), to.display())]
    Copy { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("{} already exists: not overwriting it", path.display())]
    Exists { path: PathBuf },
    #[error("`{command}` failed ({status}): run it yourself to see why")]
    Install { command: String, status: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
}

impl Fix {
    /// What the fix will do, said before doing it.
    pub fn describe(&self) -> String {
        match self {
            Fix::KeyMode { path } => format!("chmod 600 {}", path.display()),
            Fix::GitIgnore { gitignore, entry } => {
                format!("add `{entry}` to {}", gitignore.display())
            }
            Fix::CopyEnvExample { from, to } => {
                format!("copy {} to {} (then fill in its values)", from.display(), to.display())
            }
            Fix::AptInstall { packages } => {
                format!("apt-get install -y {}", packages.join(" "))
            }
        }
    }

    /// Applies the fix; returns what was done.
    pub fn apply(&self) -> Result<String, FixError> {
        match self {
            Fix::KeyMode { path } => {
                let mode = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(path, mode)
                    .map_err(|source| FixError::Chmod { path: path.clone(), source })?;
            }
            Fix::GitIgnore { gitignore, entry } => {
                append_line(gitignore, entry).map_err(|source| FixError::GitIgnore {
                    path: gitignore.clone(),
                    entry: entry.clone(),
                    source,
                })?
            }
            Fix::CopyEnvExample { from, to } => copy_new(from, to)?,
            Fix::AptInstall { packages } => apt_install(packages)?,
        }
        Ok(self.describe())
    }

    /// Folds every package install into one `apt-get` run, kept last.
    pub(crate) fn merge_installs(fixes: Vec<Fix>) -> Vec<Fix> {
        let mut packages: Vec<String> = Vec::new();
        let mut others = Vec::new();
        for fix in fixes {
            match fix {
                Fix::AptInstall { packages: more } => {
                    for p in more {
                        if !packages.contains(&p) {
                            packages.push(p);
                        }
                    }
                }
                other => others.push(other),
            }
        }
        if !packages.is_empty() {
            others.push(Fix::AptInstall { packages });
        }
        others
    }
}

fn append_line(path: &Path, entry: &str) -> std::io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let separator = if existing.is_empty() || existing.ends_with('\n') { "" } else { "\n" };
    writeln!(file, "{separator}{entry}")
}

/// Copies without ever overwriting, and keeps the copy private: `.env` holds secrets.
fn copy_new(from: &Path, to: &Path) -> Result<(), FixError> {
    use std::os::unix::fs::OpenOptionsExt;
    let copy_err = |source| FixError::Copy { from: from.into(), to: to.into(), source };
    let text = std::fs::read(from).map_err(copy_err)?;
    let mut file =
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(FixError::Exists { path: to.into() })
            }
            Err(e) => return Err(copy_err(e)),
        };
    file.write_all(&text).map_err(copy_err)
}

fn apt_install(packages: &[String]) -> Result<(), FixError> {
    let command = format!("apt-get install -y {}", packages.join(" "));
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|source| FixError::Spawn { command: command.clone(), source })
    };
    // A fresh machine's package lists may be empty; an update failure is not fatal by itself.
    let _ = run(&["update", "-qq"]);
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages.iter().map(String::as_str));
    let status = run(&args)?;
    if !status.success() {
        return Err(FixError::Install { command, status: status.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_mode_fix_makes_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fix = Fix::KeyMode { path: key.clone() };
        assert_eq!(fix.apply().unwrap(), format!("chmod 600 {}", key.display()));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn gitignore_fix_appends_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let ignore = dir.path().join(".gitignore");
        std::fs::write(&ignore, "/target").unwrap();
        Fix::GitIgnore { gitignore: ignore.clone(), entry: ".env".into() }.apply().unwrap();
        assert_eq!(std::fs::read_to_string(&ignore).unwrap(), "/target\n.env\n");
    }

    #[test]
    fn env_example_copy_never_overwrites_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join(".env.example"), dir.path().join(".env"));
        std::fs::write(&from, "A=1\n").unwrap();
        let fix = Fix::CopyEnvExample { from, to: to.clone() };
        fix.apply().unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "A=1\n");
        assert_eq!(std::fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(fix.apply(), Err(FixError::Exists { .. })));
    }

    #[test]
    fn installs_merge_into_one_apt_run_at_the_end() {
        let key = Fix::KeyMode { path: "/k".into() };
        let fixes = vec![
            Fix::AptInstall { packages: vec!["redis-tools".into()] },
            key.clone(),
            Fix::AptInstall { packages: vec!["openssh-client".into(), "redis-tools".into()] },
        ];
        let merged = Fix::merge_installs(fixes);
        assert_eq!(
            merged,
            vec![
                key,
                Fix::AptInstall { packages: vec!["redis-tools".into(), "openssh-client".into()] }
            ]
        );
    }
}
