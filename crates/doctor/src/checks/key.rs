//! SSH key: the key file the tunnel will really use (`BASTION_KEY_FILE`, else
//! the `IdentityFile` of the bastion's `~/.ssh/config` alias) exists, is a
//! regular file owned by the user with mode 0600 or 0400, parses, and is either
//! unencrypted or openable (a passphrase, the agent, or a terminal to ask on);
//! its type. Without a key file, the agent.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mesh_config::{Config, Secret};
use mesh_tunnel::ssh_config::{ConfigLine, Key};
use mesh_tunnel::TunnelSpec;
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_key::{Algorithm, PrivateKey, PublicKey};

use crate::checks::needs_config;
use crate::env::Env;
use crate::fix::Fix;
use crate::{Category, CategoryReport, Check, Severity};

/// What the key file holds, as far as can be told without a passphrase.
enum Parsed {
    OpenSsh(Box<PrivateKey>),
    Pem { kind: &'static str, encrypted: bool, text: String },
}

/// Where the key the tunnel will offer first comes from.
pub(crate) enum Source {
    /// `BASTION_KEY_FILE` (or its alias `SSH_KEY_PATH`).
    Variable,
    /// The `IdentityFile` line of the bastion's `Host` alias in the ssh config.
    SshConfig(ConfigLine),
}

impl Source {
    /// Said to the user: `BASTION_KEY_FILE`, `IdentityFile from ~/.ssh/config.d/bastion:5`.
    fn describe(&self, env: &Env<'_>) -> String {
        match self {
            Source::Variable => "BASTION_KEY_FILE".to_string(),
            Source::SshConfig(line) => {
                format!("IdentityFile from {}:{}", env.show(&line.path), line.line)
            }
        }
    }

    /// How to point the tunnel at the right key, for fixes.
    fn repoint(&self, env: &Env<'_>) -> String {
        match self {
            Source::Variable => {
                "set BASTION_KEY_FILE to the private key the bastion accepts".into()
            }
            Source::SshConfig(line) => format!(
                "correct IdentityFile at {}:{}, or set BASTION_KEY_FILE to the private key the \
                 bastion accepts",
                env.show(&line.path),
                line.line
            ),
        }
    }
}

/// The key file the tunnel will use, as `TunnelSpec::resolve` gives it: `BASTION_KEY_FILE`,
/// else the `IdentityFile` of a `Host` alias in `~/.ssh/config` (Includes followed). An ssh
/// config that cannot be resolved falls back to the variable (the Bastion check names it).
pub(crate) fn key_file(config: &Config, home: Option<&Path>) -> Option<(PathBuf, Source)> {
    let bastion = config.bastion.as_ref()?;
    let mut spec = TunnelSpec::new(bastion.host.clone(), Vec::new());
    spec.key_file = bastion.key_file.clone();
    spec.ssh_config = home.map(|h| h.join(".ssh/config"));
    let Ok(target) = spec.resolve() else {
        return bastion.key_file.clone().map(|path| (path, Source::Variable));
    };
    let path = target.key_file?;
    match target.from_ssh_config.get(&Key::IdentityFile) {
        Some(line) => Some((path, Source::SshConfig(line.clone()))),
        None => Some((path, Source::Variable)),
    }
}

pub(crate) async fn check(env: &Env<'_>, asked: Option<&Secret>) -> CategoryReport {
    let Some(config) = env.config else { return needs_config(Category::SshKey) };
    let Some(bastion) = &config.bastion else {
        let why = "not checked: no bastion configured";
        return CategoryReport::skipped(Category::SshKey, why);
    };
    let started = Instant::now();
    let agent = agent_keys(env).await;
    let Some((path, source)) = key_file(config, env.home().as_deref()) else {
        let check = agent_only(&agent, &bastion.host).took(started.elapsed());
        return CategoryReport::new(Category::SshKey, check.message.clone(), vec![check]);
    };
    let passphrase = asked.or(bastion.passphrase.as_ref());
    let mut checks = vec![Check::ok("source", source.describe(env))];
    checks.extend(file_checks(env, &path, &source, passphrase, &agent).await);
    let checks: Vec<Check> = checks.into_iter().map(|c| c.took(started.elapsed())).collect();
    let mut summary = env.show(&path);
    let details: Vec<&str> = checks
        .iter()
        .filter(|c| c.severity == Severity::Ok && (c.name == "type" || c.name == "encryption"))
        .map(|c| c.message.as_str())
        .collect();
    if !details.is_empty() {
        summary = format!("{summary} ({})", details.join(", "));
    }
    if let Source::SshConfig(_) = source {
        summary = format!("{summary}, {}", source.describe(env));
    }
    CategoryReport::new(Category::SshKey, summary, checks)
}

/// No key file: everything rests on the agent.
fn agent_only(agent: &Option<Vec<PublicKey>>, host: &str) -> Check {
    let none = format!("no BASTION_KEY_FILE nor IdentityFile for `{host}` in ~/.ssh/config");
    match agent {
        Some(keys) if !keys.is_empty() => {
            Check::ok("agent", format!("{none}; ssh-agent offers {} key(s)", keys.len()))
        }
        Some(_) => Check::fail(
            "agent",
            format!("{none}, and ssh-agent holds no key"),
            "`ssh-add ~/.ssh/<your key>`, or set BASTION_KEY_FILE in .env",
        ),
        None => Check::fail(
            "key",
            format!("{none}, and no ssh-agent (SSH_AUTH_SOCK unset or dead): no key to offer"),
            "set BASTION_KEY_FILE=~/.ssh/<your key> in .env, or start ssh-agent and `ssh-add` it",
        ),
    }
}

async fn file_checks(
    env: &Env<'_>,
    path: &Path,
    source: &Source,
    passphrase: Option<&Secret>,
    agent: &Option<Vec<PublicKey>>,
) -> Vec<Check> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            let message = format!("{} {shown}: {e}", source.describe(env));
            return vec![Check::fail("file", message, source.repoint(env))];
        }
    };
    if !meta.is_file() {
        let message = format!("{} {shown} is not a regular file", source.describe(env));
        return vec![Check::fail("file", message, source.repoint(env))];
    }
    let mut checks = vec![owner(&meta, &shown), mode(&meta, path, &shown)];
    let parsed = match parse(path) {
        Ok(parsed) => parsed,
        Err(check) => {
            checks.push(*check);
            return checks;
        }
    };
    checks.push(kind(&parsed, &shown));
    checks.push(encryption(env, parsed, path, passphrase, agent).await);
    checks
}

fn owner(meta: &std::fs::Metadata, shown: &str) -> Check {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() == me {
        return Check::ok("owner", "yours");
    }
    let message = format!("{shown} belongs to uid {}, not to you (uid {me})", meta.uid());
    Check::warn("owner", message, format!("`chown $(id -u) {shown}`, or use a copy of your own"))
}

fn mode(meta: &std::fs::Metadata, path: &Path, shown: &str) -> Check {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Check::ok("mode", format!("{mode:04o}"));
    }
    let message = format!(
        "{shown} has mode {mode:04o}: other users can read it, so ssh and the tunnel refuse it"
    );
    Check::fail("mode", message, format!("chmod 600 {shown}"))
        .with_auto_fix(Fix::KeyMode { path: path.to_path_buf() })
}

fn parse(path: &Path) -> Result<Parsed, Box<Check>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = format!("cannot read {shown}: {e}");
        Box::new(Check::fail(
            "format",
            message,
            "check the file's permissions and that it is a text key",
        ))
    })?;
    let unsupported =
        |what: &str, fix: String| Box::new(Check::fail("format", format!("{shown}: {what}"), fix));
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return PrivateKey::from_openssh(&text).map(|k| Parsed::OpenSsh(Box::new(k))).map_err(
            |e| {
                unsupported(
                    &format!("unreadable OpenSSH key ({e})"),
                    format!("`ssh-keygen -y -f {shown}` tells whether it is intact"),
                )
            },
        );
    }
    let encrypted = text.contains("ENCRYPTED");
    let kind = if text.contains("BEGIN RSA PRIVATE KEY") {
        "rsa (PEM)"
    } else if text.contains("BEGIN EC PRIVATE KEY") {
        "ecdsa (PEM)"
    } else if text.contains("PRIVATE KEY-----") && text.contains("BEGIN DSA") {
        return Err(unsupported(
            "a DSA key, which OpenSSH no longer accepts",
            "create an ed25519 key: `ssh-keygen -t ed25519`".into(),
        ));
    } else if text.contains("BEGIN PRIVATE KEY") || text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        "PKCS#8"
    } else if text.starts_with("PuTTY-User-Key-File-") {
        return Err(unsupported(
            "a PuTTY key",
            format!("convert it: `puttygen {shown} -O private-openssh -o <new file>`"),
        ));
    } else {
        return Err(unsupported(
            "not a private key this tool reads (OpenSSH, PEM, PKCS#8)",
            format!("rewrite it with `ssh-keygen -p -f {shown}`"),
        ));
    };
    if text.contains("DEK-Info:") && !text.contains("DEK-Info: AES-128-CBC") {
        return Err(unsupported(
            "legacy PEM encryption other than AES-128-CBC",
            format!("rewrite it in the OpenSSH format: `ssh-keygen -p -f {shown}`"),
        ));
    }
    Ok(Parsed::Pem { kind, encrypted, text })
}

fn kind(parsed: &Parsed, shown: &str) -> Check {
    let name = match parsed {
        Parsed::Pem { kind, .. } => return Check::ok("type", *kind),
        Parsed::OpenSsh(key) => match key.algorithm() {
            Algorithm::Ed25519 => "ed25519".to_string(),
            Algorithm::Ecdsa { curve } => format!("ecdsa {}", curve.as_str()),
            Algorithm::Rsa { .. } => "rsa".to_string(),
            Algorithm::Dsa => {
                let message = format!("{shown} is a DSA key, which OpenSSH no longer accepts");
                return Check::fail(
                    "type",
                    message,
                    "create an ed25519 key: `ssh-keygen -t ed25519`",
                );
            }
            other => other.as_str().to_string(),
        },
    };
    Check::ok("type", name)
}

async fn encryption(
    env: &Env<'_>,
    parsed: Parsed,
    path: &Path,
    passphrase: Option<&Secret>,
    agent: &Option<Vec<PublicKey>>,
) -> Check {
    let shown = path.display().to_string();
    let encrypted = match &parsed {
        Parsed::OpenSsh(key) => key.is_encrypted(),
        Parsed::Pem { encrypted, .. } => *encrypted,
    };
    if !encrypted {
        return Check::ok("encryption", "not encrypted");
    }
    if let Some(secret) = passphrase {
        let secret = secret.clone();
        let opens = tokio::task::spawn_blocking(move || opens_with(&parsed, &secret)).await;
        return match opens {
            Ok(true) => Check::ok("encryption", "encrypted; the passphrase opens it"),
            _ => Check::fail(
                "encryption",
                format!("the passphrase does not open {shown}"),
                "check BASTION_KEY_PASSPHRASE (a trailing newline counts)",
            ),
        };
    }
    let in_agent = match (&parsed, agent) {
        (Parsed::OpenSsh(key), Some(keys)) => {
            keys.iter().any(|k| k.key_data() == key.public_key().key_data())
        }
        _ => false,
    };
    if in_agent {
        return Check::ok("encryption", "encrypted; ssh-agent holds it");
    }
    if env.options.interactive {
        return Check::ok("encryption", "encrypted; the passphrase will be asked once");
    }
    Check::fail(
        "encryption",
        format!("{shown} is encrypted and no passphrase is available (no terminal to ask on)"),
        format!("set BASTION_KEY_PASSPHRASE, or `ssh-add {shown}`, or run from a terminal"),
    )
}

fn opens_with(parsed: &Parsed, secret: &Secret) -> bool {
    match parsed {
        Parsed::OpenSsh(key) => key.decrypt(secret.expose().as_bytes()).is_ok(),
        Parsed::Pem { text, .. } => {
            russh::keys::decode_secret_key(text, Some(secret.expose())).is_ok()
        }
    }
}

/// The agent's public keys; `None` without a reachable agent.
async fn agent_keys(env: &Env<'_>) -> Option<Vec<PublicKey>> {
    let socket = env.var("SSH_AUTH_SOCK")?;
    let mut agent = AgentClient::connect_uds(socket).await.ok()?;
    let identities = agent.request_identities().await.ok()?;
    Some(
        identities
            .into_iter()
            .filter_map(|id| match id {
                AgentIdentity::PublicKey { key, .. } => Some(key),
                _ => None,
            })
            .collect(),
    )
}

/// The key file to ask a passphrase for before the checks start: the one the tunnel will
/// use ([`key_file`]), encrypted, and no `BASTION_KEY_PASSPHRASE`.
pub(crate) fn needs_prompt(
    config: Option<&Config>,
    shell: &BTreeMap<String, String>,
) -> Option<PathBuf> {
    let config = config?;
    if config.bastion.as_ref()?.passphrase.is_some() {
        return None;
    }
    let home = shell.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let (path, _) = key_file(config, home.as_deref())?;
    let encrypted = match parse(&path).ok()? {
        Parsed::OpenSsh(key) => key.is_encrypted(),
        Parsed::Pem { encrypted, .. } => encrypted,
    };
    encrypted.then_some(path)
}
