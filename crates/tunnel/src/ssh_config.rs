//! The four `~/.ssh/config` keys a bastion alias needs: HostName, User, Port, IdentityFile.

use std::path::{Path, PathBuf};

/// What `~/.ssh/config` says about one `Host` alias; `None` where it says nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
}

impl HostConfig {
    /// Reads `path` and collects the values for `alias` as ssh does: the first value found
    /// for each key wins, `Host` blocks match by pattern (`*`, `?`, `!`), `Match` blocks are
    /// skipped. A missing file says nothing.
    ///
    /// FIXME: `Include` and `Match` are not followed, so an alias defined only through them is
    /// not found and the name is dialled as it is; the user then sees "cannot reach".
    pub fn load(path: &Path, alias: &str) -> std::io::Result<HostConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(HostConfig::parse(&text, alias)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostConfig::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str, alias: &str) -> HostConfig {
        let mut config = HostConfig::default();
        let mut active = true;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c == '=' || c.is_whitespace()) {
                Some((k, v)) => (k.trim(), v.trim().trim_start_matches('=').trim()),
                None => continue,
            };
            let value = value.trim_matches('"');
            match key.to_ascii_lowercase().as_str() {
                "host" => active = host_matches(value, alias),
                "match" => active = false,
                "hostname" if active && config.host_name.is_none() => {
                    config.host_name = Some(value.replace("%h", alias));
                }
                "user" if active && config.user.is_none() => config.user = Some(value.into()),
                "port" if active && config.port.is_none() => config.port = value.parse().ok(),
                "identityfile" if active && config.identity_file.is_none() => {
                    config.identity_file = Some(expand_home(value));
                }
                _ => {}
            }
        }
        config
    }
}

fn host_matches(patterns: &str, alias: &str) -> bool {
    let alias = alias.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split_whitespace() {
        let pattern = pattern.to_ascii_lowercase();
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated.as_bytes(), alias.as_bytes()) {
                return false;
            }
        } else if wildcard(pattern.as_bytes(), alias.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard(&pattern[1..], text) || (!text.is_empty() && wildcard(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => wildcard(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// `~/x` and `$HOME/x` to an absolute path.
pub(crate) fn expand_home(value: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for prefix in ["~/", "$HOME/", "${HOME}/"] {
        if let (Some(rest), Some(home)) = (value.strip_prefix(prefix), home.as_ref()) {
            return home.join(rest);
        }
    }
    PathBuf::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# team bastions
Host staging-bastion stg
    HostName 10.20.0.5
    User ubuntu
    Port 2222
    IdentityFile /keys/staging.pem

Host *.internal !db.internal
    User admin

Match host prod
    User nobody

Host *
    User fallback
    IdentityFile=/keys/default
";

    #[test]
    fn alias_gives_host_name_user_port_and_identity_file() {
        let config = HostConfig::parse(CONFIG, "stg");
        assert_eq!(
            config,
            HostConfig {
                host_name: Some("10.20.0.5".into()),
                user: Some("ubuntu".into()),
                port: Some(2222),
                identity_file: Some("/keys/staging.pem".into()),
            }
        );
    }

    #[test]
    fn first_value_wins_and_negation_excludes() {
        let config = HostConfig::parse(CONFIG, "web.internal");
        assert_eq!(config.user.as_deref(), Some("admin"));
        assert_eq!(config.identity_file, Some(PathBuf::from("/keys/default")));
        let config = HostConfig::parse(CONFIG, "db.internal");
        assert_eq!(config.user.as_deref(), Some("fallback"));
        assert_eq!(config.host_name, None);
    }

    #[test]
    fn match_blocks_are_skipped() {
        assert_eq!(HostConfig::parse(CONFIG, "prod").user.as_deref(), Some("fallback"));
    }
}
