//! The four `~/.ssh/config` keys a bastion alias needs (HostName, User, Port, IdentityFile),
//! read as OpenSSH reads them, `Include` files followed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

/// How deep `Include` may nest, as in OpenSSH: the file the caller names is depth 0, a file
/// it includes depth 1, and so on.
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// What `~/.ssh/config` says about one `Host` alias; `None` where it says nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// The line each value above was read from.
    origins: BTreeMap<Key, ConfigLine>,
}

/// One of the keys [`HostConfig`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    HostName,
    User,
    Port,
    IdentityFile,
}

impl Key {
    /// The keyword as ssh_config spells it.
    pub fn keyword(self) -> &'static str {
        match self {
            Key::HostName => "HostName",
            Key::User => "User",
            Key::Port => "Port",
            Key::IdentityFile => "IdentityFile",
        }
    }
}

/// A line of an ssh config file: where a value was read, or where an `Include` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLine {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for ConfigLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// Why an ssh config could not be read. A missing file, or an `Include` pattern matching
/// nothing, is not an error: it says nothing, as for ssh.
#[derive(Debug, thiserror::Error)]
pub enum SshConfigError {
    #[error(
        "cannot read the ssh config {path}: {source}: fix its permissions or ownership",
        path = .path.display()
    )]
    Unreadable { path: PathBuf, source: io::Error },

    #[error(
        "cannot read {path}, included at {included_at}: {source}: fix its permissions, or the \
         `Include` line",
        path = .path.display()
    )]
    IncludeUnreadable { path: PathBuf, included_at: ConfigLine, source: io::Error },

    #[error(
        "{included_at}: `Include` of {path} nests more than {MAX_INCLUDE_DEPTH} files deep \
         (does a file include itself?): break the loop in your ssh config",
        path = .path.display()
    )]
    IncludeTooDeep { path: PathBuf, included_at: ConfigLine },
}

impl HostConfig {
    /// Reads `path` and collects the values for `alias` as ssh does: the first value found
    /// for each key wins, in reading order; `Host` blocks match by pattern (`*`, `?`, `!`);
    /// `Include` reads the files its arguments name (glob patterns, `~`, a relative path
    /// taken from the directory of `path`, as ssh takes it from `~/.ssh`) in place, in
    /// lexical order, when the block it stands in applies. A missing file says nothing.
    ///
    /// FIXME: `Match` blocks are taken as never matching (their conditions, `exec` among
    /// them, are not evaluated), so a HostName, User, Port or IdentityFile set only under
    /// `Match` is not applied: the tunnel then dials the alias's name, as `ec2-user` on
    /// port 22, where ssh would not, and the user sees a connect or auth failure.
    pub fn load(path: &Path, alias: &str) -> Result<HostConfig, SshConfigError> {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut reader = Reader { alias, base, home, config: HostConfig::default() };
        match std::fs::read(path) {
            Ok(bytes) => reader.read_lines(&String::from_utf8_lossy(&bytes), path, 0)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SshConfigError::Unreadable { path: path.to_path_buf(), source })
            }
        }
        Ok(reader.config)
    }

    /// The line `key`'s value was read from; `None` when the config does not set it.
    pub fn origin(&self, key: Key) -> Option<&ConfigLine> {
        self.origins.get(&key)
    }
}

/// One reading of a config file and the files it includes, for one alias.
struct Reader<'a> {
    alias: &'a str,
    /// Where a relative `Include` path is taken from, whichever file it is written in.
    base: PathBuf,
    /// For `~` in `Include`.
    home: Option<PathBuf>,
    config: HostConfig,
}

impl Reader<'_> {
    /// Reads the lines of the file at `path`, `depth` includes below the caller's file.
    /// Each file starts outside any `Host` block; the including file's block is restored
    /// by returning.
    fn read_lines(&mut self, text: &str, path: &Path, depth: usize) -> Result<(), SshConfigError> {
        let mut active = true;
        for (index, line) in text.lines().enumerate() {
            let Some((keyword, args)) = split_line(line) else { continue };
            let at = ConfigLine { path: path.to_path_buf(), line: index + 1 };
            match keyword.as_str() {
                "host" => active = host_matches(&args, self.alias),
                "match" => active = false,
                // An Include in a block that does not apply is not read: ssh reads it
                // without ever matching a `Host` in it, which sets nothing either.
                "include" if active => self.include(&args, &at, depth)?,
                _ if active => self.set(&keyword, &args, at),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads every file an `Include` line's arguments name, each pattern's matches in
    /// lexical order.
    fn include(
        &mut self,
        args: &[String],
        at: &ConfigLine,
        depth: usize,
    ) -> Result<(), SshConfigError> {
        for arg in args {
            let pattern = anchor(arg, &self.base, self.home.as_deref());
            let unreadable = |path: PathBuf, source| SshConfigError::IncludeUnreadable {
                path,
                included_at: at.clone(),
                source,
            };
            for path in glob(&pattern).map_err(|(dir, e)| unreadable(dir, e))? {
                if depth + 1 > MAX_INCLUDE_DEPTH {
                    return Err(SshConfigError::IncludeTooDeep { path, included_at: at.clone() });
                }
                tracing::debug!(path = %path.display(), depth = depth + 1, "ssh config include");
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        self.read_lines(&String::from_utf8_lossy(&bytes), &path, depth + 1)?
                    }
                    // ssh ignores a name matching nothing and reads a directory as empty.
                    Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::IsADirectory) => {
                    }
                    Err(e) => return Err(unreadable(path, e)),
                }
            }
        }
        Ok(())
    }

    /// Records the value of one of our four keys, unless an earlier line gave it.
    fn set(&mut self, keyword: &str, args: &[String], at: ConfigLine) {
        let key = match keyword {
            "hostname" => Key::HostName,
            "user" => Key::User,
            "port" => Key::Port,
            "identityfile" => Key::IdentityFile,
            _ => return,
        };
        let (Some(value), false) = (args.first(), self.config.origins.contains_key(&key)) else {
            return;
        };
        let config = &mut self.config;
        match key {
            Key::HostName => config.host_name = Some(value.replace("%h", self.alias)),
            Key::User => config.user = Some(value.clone()),
            Key::Port => match value.parse() {
                Ok(port) => config.port = Some(port),
                Err(_) => return,
            },
            Key::IdentityFile => config.identity_file = Some(expand_home(value)),
        }
        config.origins.insert(key, at);
    }
}

/// A line's lowercase keyword and its arguments, split as ssh splits them (`Key value`,
/// `Key=value`, `Key = value`); `None` for a blank line or a comment.
fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(line.len());
    let (keyword, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((keyword.to_ascii_lowercase(), split_args(rest)))
}

/// Space-separated arguments; `"..."` or `'...'` keep spaces, a backslash escapes a quote,
/// a backslash or (unquoted) a space, and a `#` starting an argument ends the line.
fn split_args(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if matches!(chars.peek(), None | Some('#')) {
            return args;
        }
        let mut arg = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (_, '\\') => match chars.peek() {
                    Some(&next)
                        if matches!(next, '"' | '\'' | '\\')
                            || (quote.is_none() && next == ' ') =>
                    {
                        arg.push(next);
                        chars.next();
                    }
                    _ => arg.push('\\'),
                },
                (_, c) => arg.push(c),
            }
        }
        args.push(arg);
    }
}

fn host_matches(patterns: &[String], alias: &str) -> bool {
    let alias = alias.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns {
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

/// ssh's host pattern match: `*` and `?` only.
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

/// An `Include` argument as an absolute path (pattern): `~` and `~user` expanded, a
/// relative path taken from `base`.
fn anchor(arg: &str, base: &Path, home: Option<&Path>) -> PathBuf {
    let path = match arg.strip_prefix('~') {
        Some(rest) => {
            let (user, rest) = rest.split_once('/').unwrap_or((rest, ""));
            let dir = if user.is_empty() {
                home.map(Path::to_path_buf)
            } else {
                nix::unistd::User::from_name(user).ok().flatten().map(|u| u.dir)
            };
            match dir {
                Some(dir) => dir.join(rest),
                None => PathBuf::from(arg),
            }
        }
        None => PathBuf::from(arg),
    };
    base.join(path)
}

/// The files a path pattern names, sorted as glob(3) sorts them; `*`, `?` and `[...]` in
/// any component, a leading `.` matched only by a leading `.`. A pattern without wildcards
/// is returned as it is, existing or not. Err: a directory that could not be listed.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let has_wildcard = |s: &[u8]| s.iter().any(|b| matches!(b, b'*' | b'?' | b'['));
    if !has_wildcard(pattern.as_os_str().as_encoded_bytes()) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let mut found = vec![PathBuf::new()];
    for component in pattern.components() {
        let part = component.as_os_str().as_encoded_bytes();
        if !has_wildcard(part) {
            found.iter_mut().for_each(|p| p.push(component));
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                    continue
                }
                Err(e) => return Err((dir.clone(), e)),
            };
            for entry in entries {
                let name = entry.map_err(|e| (dir.clone(), e))?.file_name();
                let name_bytes = name.as_encoded_bytes();
                let hidden = name_bytes.first() == Some(&b'.') && part.first() != Some(&b'.');
                if !hidden && glob_match(part, name_bytes) {
                    next.push(dir.join(&name));
                }
            }
        }
        found = next;
    }
    found.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(found)
}

/// fnmatch(3) on one file name: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`, `\` escaping.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let Some((&p, rest)) = pattern.split_first() else { return name.is_empty() };
    match p {
        b'*' => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        b'?' => !name.is_empty() && glob_match(rest, &name[1..]),
        b'[' => match (name.first(), bracket(rest)) {
            (Some(&c), Some((set, after))) => set(c) && glob_match(after, &name[1..]),
            (_, Some(_)) => false,
            // No closing `]`: the `[` is an ordinary character.
            (c, None) => c == Some(&b'[') && glob_match(rest, &name[1..]),
        },
        b'\\' if !rest.is_empty() => {
            name.first() == rest.first() && glob_match(&rest[1..], &name[1..])
        }
        _ => name.first() == Some(&p) && glob_match(rest, &name[1..]),
    }
}

/// The set `[...]` opening `pattern` (just after its `[`) as a test on a byte, and what
/// follows its `]`; `None` when it is not closed.
fn bracket(pattern: &[u8]) -> Option<(impl Fn(u8) -> bool + '_, &[u8])> {
    let negated = matches!(pattern.first(), Some(b'!' | b'^'));
    let start = usize::from(negated);
    // A `]` first in the set is a member, not its end.
    let close = start + 1 + pattern.get(start + 1..)?.iter().position(|&b| b == b']')?;
    let members = &pattern[start..close];
    let set = move |c: u8| {
        let mut i = 0;
        let mut found = false;
        while i < members.len() {
            if members.get(i + 1) == Some(&b'-') && i + 2 < members.len() {
                found |= (members[i]..=members[i + 2]).contains(&c);
                i += 3;
            } else {
                found |= members[i] == c;
                i += 1;
            }
        }
        found != negated
    };
    Some((set, &pattern[close + 1..]))
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

    /// A temporary directory holding `files` (relative path, text); the first is the config.
    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let config = dir.path().join(files[0].0);
        (dir, config)
    }

    fn load(files: &[(&str, &str)], alias: &str) -> HostConfig {
        let (_dir, config) = tree(files);
        HostConfig::load(&config, alias).unwrap()
    }

    #[test]
    fn alias_gives_host_name_user_port_and_identity_file() {
        let (_dir, path) = tree(&[("config", CONFIG)]);
        let config = HostConfig::load(&path, "stg").unwrap();
        assert_eq!(config.host_name.as_deref(), Some("10.20.0.5"));
        assert_eq!(config.user.as_deref(), Some("ubuntu"));
        assert_eq!(config.port, Some(2222));
        assert_eq!(config.identity_file, Some(PathBuf::from("/keys/staging.pem")));
        let line = |line| Some(ConfigLine { path: path.clone(), line });
        assert_eq!(config.origin(Key::HostName).cloned(), line(3));
        assert_eq!(config.origin(Key::IdentityFile).cloned(), line(6));
    }

    #[test]
    fn first_value_wins_and_negation_excludes() {
        let config = load(&[("config", CONFIG)], "web.internal");
        assert_eq!(config.user.as_deref(), Some("admin"));
        assert_eq!(config.identity_file, Some(PathBuf::from("/keys/default")));
        let config = load(&[("config", CONFIG)], "db.internal");
        assert_eq!(config.user.as_deref(), Some("fallback"));
        assert_eq!(config.host_name, None);
    }

    #[test]
    fn match_blocks_are_skipped() {
        assert_eq!(load(&[("config", CONFIG)], "prod").user.as_deref(), Some("fallback"));
    }

    #[test]
    fn missing_config_says_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig::load(&dir.path().join("config"), "bastion").unwrap();
        assert_eq!(config, HostConfig::default());
    }

    #[test]
    fn alias_defined_only_in_an_included_file_is_found() {
        let (dir, path) = tree(&[
            ("config", "Include config.d/*\n\nHost *\n    User fallback\n"),
            ("config.d/work", "Host bastion\n  HostName 10.0.0.7\n  User ubuntu\n  Port 2200\n"),
        ]);
        let config = HostConfig::load(&path, "bastion").unwrap();
        assert_eq!(config.host_name.as_deref(), Some("10.0.0.7"));
        assert_eq!(config.user.as_deref(), Some("ubuntu"));
        assert_eq!(config.port, Some(2200));
        let work = dir.path().join("config.d/work");
        assert_eq!(config.origin(Key::User), Some(&ConfigLine { path: work, line: 3 }));
    }

    #[test]
    fn glob_matches_are_read_in_lexical_order_skipping_dot_files_and_directories() {
        let config = load(
            &[
                ("config", "Include conf.d/*.conf\n"),
                ("conf.d/20-b.conf", "User second\nPort 2020\n"),
                ("conf.d/10-a.conf", "User first\n"),
                ("conf.d/.00-hidden.conf", "User hidden\nHostName hidden\n"),
                ("conf.d/05-dir.conf/x", "HostName in-a-directory\n"),
                ("conf.d/00-other.txt", "HostName not-matched\n"),
            ],
            "bastion",
        );
        assert_eq!(config.user.as_deref(), Some("first"));
        assert_eq!(config.port, Some(2020));
        assert_eq!(config.host_name, None);
    }

    #[test]
    fn include_line_takes_several_arguments_quoted_or_not() {
        let config = load(
            &[
                ("config", "Include missing \"with space\" 'b'  # comment\n"),
                ("with space", "User spaced\n"),
                ("b", "User b\nPort 2\n"),
            ],
            "bastion",
        );
        assert_eq!(config.user.as_deref(), Some("spaced"));
        assert_eq!(config.port, Some(2));
    }

    #[test]
    fn include_inside_a_host_block_applies_only_when_the_block_matches() {
        let files = [
            (
                "config",
                "Host other\n  Include other.conf\nHost bastion\n  Include bastion.conf\n  \
                 Port 2222\n",
            ),
            ("other.conf", "User wrong\nHostName wrong\n"),
            // Its lines apply at once; its own Host blocks are matched as usual.
            ("bastion.conf", "User right\nHost nothing\n  HostName wrong\n"),
        ];
        let config = load(&files, "bastion");
        assert_eq!(config.user.as_deref(), Some("right"));
        assert_eq!(config.host_name, None);
        // The including block continues after the included file's own `Host nothing`.
        assert_eq!(config.port, Some(2222));
        assert_eq!(load(&files, "elsewhere"), HostConfig::default());
    }

    #[test]
    fn relative_include_is_taken_from_the_config_directory_at_any_depth() {
        let config = load(
            &[
                ("ssh/config", "Include config.d/first\n"),
                // Relative to ssh/, as ssh takes it from ~/.ssh, not from config.d/.
                ("ssh/config.d/first", "Include second\n"),
                ("ssh/second", "User nested\n"),
                ("ssh/config.d/second", "User wrong\n"),
            ],
            "bastion",
        );
        assert_eq!(config.user.as_deref(), Some("nested"));
    }

    #[test]
    fn tilde_and_absolute_include_paths() {
        let base = Path::new("/home/u/.ssh");
        let home = Some(Path::new("/home/u"));
        assert_eq!(anchor("~/work.conf", base, home), PathBuf::from("/home/u/work.conf"));
        assert_eq!(anchor("~", base, home), PathBuf::from("/home/u/"));
        assert_eq!(anchor("~root/x", base, home), PathBuf::from("/root/x"));
        assert_eq!(anchor("/etc/ssh/x", base, home), PathBuf::from("/etc/ssh/x"));
        assert_eq!(anchor("config.d/*", base, home), PathBuf::from("/home/u/.ssh/config.d/*"));
    }

    #[test]
    fn include_loop_is_an_error_naming_the_file_not_a_hang() {
        let (dir, path) =
            tree(&[("config", "Host *\n  Include loop\n"), ("loop", "Include loop\n")]);
        let err = HostConfig::load(&path, "bastion").unwrap_err();
        let loop_file = dir.path().join("loop");
        assert!(
            matches!(&err, SshConfigError::IncludeTooDeep { path, included_at }
                if *path == loop_file && included_at.path == loop_file && included_at.line == 1),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{0}:1: `Include` of {0} nests more than 16 files deep (does a file include \
                 itself?): break the loop in your ssh config",
                loop_file.display()
            )
        );
    }

    #[test]
    fn sixteen_nested_includes_are_read() {
        let mut files = vec![("config".to_string(), "Include f1\n".to_string())];
        for i in 1..=MAX_INCLUDE_DEPTH {
            files.push((format!("f{i}"), format!("Include f{}\n", i + 1)));
        }
        files.last_mut().unwrap().1 = "User deepest\n".into();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (&p[..], &t[..])).collect();
        assert_eq!(load(&files, "bastion").user.as_deref(), Some("deepest"));
    }

    #[test]
    fn first_value_wins_across_files_in_reading_order() {
        let config = load(
            &[
                (
                    "config",
                    "Host bastion\n  User main\nInclude a\nHost *\n  Port 1\n  HostName h\n",
                ),
                ("a", "User from-a\nPort 2\n"),
            ],
            "bastion",
        );
        assert_eq!(config.user.as_deref(), Some("main"));
        assert_eq!(config.port, Some(2));
        assert_eq!(config.host_name.as_deref(), Some("h"));
    }

    #[test]
    fn unreadable_include_is_an_error_naming_its_path() {
        let (dir, path) = tree(&[("config", "# bastions\nInclude broken\n")]);
        let broken = dir.path().join("broken");
        // A symlink to itself cannot be opened (ELOOP), even by root.
        std::os::unix::fs::symlink(&broken, &broken).unwrap();
        let err = HostConfig::load(&path, "bastion").unwrap_err();
        let text = err.to_string();
        let expected =
            format!("cannot read {}, included at {}:2: ", broken.display(), path.display());
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.ends_with(": fix its permissions, or the `Include` line"), "{text}");
    }

    #[test]
    fn file_name_patterns() {
        assert!(glob_match(b"*.conf", b"a.conf"));
        assert!(!glob_match(b"*.conf", b"a.conf~"));
        assert!(glob_match(b"?0-*", b"10-x"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"[]]", b"]"));
        assert!(glob_match(b"a[", b"a["));
        assert!(glob_match(b"\\*", b"*"));
        assert!(!glob_match(b"\\*", b"x"));
    }
}
