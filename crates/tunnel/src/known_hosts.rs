//! Host key verification against a `known_hosts` file in every form OpenSSH writes it.
//!
//! Parsing is RustCrypto's `ssh-key` (markers, patterns, hashed names); matching the host,
//! the decision (trusted, unknown, changed, revoked) and recording a new key are ours.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::TunnelError;

/// The host keys a `known_hosts` file records for one host and port.
#[derive(Debug, Default)]
pub(crate) struct HostKeys {
    /// Keys trusted for this host (lines without a marker).
    pub trusted: Vec<PublicKey>,
    /// Keys marked `@revoked` whose patterns match this host.
    pub revoked: Vec<PublicKey>,
}

/// The outcome of checking an offered host key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted,
    /// Nothing is recorded for this host.
    Unknown,
    /// Other keys are recorded for this host: their SHA256 fingerprints.
    Changed(Vec<String>),
    Revoked,
}

/// The name `known_hosts` records for a host: `host`, or `[host]:port` when the port isn't 22.
pub(crate) fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The command that removes a stale host key, for the mismatch message.
pub(crate) fn remove_command(host: &str, port: u16, path: &Path) -> String {
    format!("ssh-keygen -R '{}' -f {}", host_entry_name(host, port), path.display())
}

/// The fingerprint as OpenSSH prints it, with the key type: `ED25519 key SHA256:...`.
pub(crate) fn describe(key: &PublicKey) -> String {
    let kind = match key.algorithm() {
        Algorithm::Ed25519 => "ED25519",
        Algorithm::Ecdsa { .. } => "ECDSA",
        Algorithm::Rsa { .. } => "RSA",
        _ => "other",
    };
    format!("{kind} key fingerprint is {}", key.fingerprint(HashAlg::Sha256))
}

impl HostKeys {
    /// Reads the keys recorded for `host`:`port`. A missing file records nothing; a line
    /// that does not parse (or carries an unknown marker) is skipped, never trusted.
    pub fn load(path: &Path, host: &str, port: u16) -> Result<HostKeys, TunnelError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(TunnelError::KnownHostsUnreadable { path: path.into(), source })
            }
        };
        Ok(HostKeys::parse(&text, host, port))
    }

    pub fn parse(text: &str, host: &str, port: u16) -> HostKeys {
        let name = host_entry_name(host, port).to_ascii_lowercase();
        let mut keys = HostKeys::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: Entry = match line.parse() {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(line = number + 1, error = %e, "known_hosts line skipped");
                    continue;
                }
            };
            if !patterns_match(entry.host_patterns(), &name) {
                continue;
            }
            match entry.marker() {
                None => keys.trusted.push(entry.public_key().clone()),
                Some(Marker::Revoked) => keys.revoked.push(entry.public_key().clone()),
                // A CA key vouches for certificates, never for a plain key equal to it.
                Some(Marker::CertAuthority) => {}
            }
        }
        keys
    }

    pub fn verdict(&self, offered: &PublicKey) -> Verdict {
        let same = |k: &PublicKey| k.key_data() == offered.key_data();
        if self.revoked.iter().any(same) {
            Verdict::Revoked
        } else if self.trusted.iter().any(same) {
            Verdict::Trusted
        } else if self.trusted.is_empty() {
            Verdict::Unknown
        } else {
            // Keys of other types only still count as a change: the bastion stopped
            // offering every key we know, which a replaced or spoofed host does.
            Verdict::Changed(self.trusted.iter().map(describe).collect())
        }
    }

    /// The host-key algorithms to offer, those recorded for this host first (trap 15: a
    /// client that prefers ed25519 while the record is RSA would call the host unknown).
    pub fn preferred_algorithms(&self, defaults: &[Algorithm]) -> Vec<Algorithm> {
        let recorded = |a: &Algorithm| {
            self.trusted.iter().any(|k| match (k.algorithm(), a) {
                (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
                (k, a) => &k == a,
            })
        };
        let mut order: Vec<Algorithm> = defaults.iter().filter(|a| recorded(a)).cloned().collect();
        order.extend(defaults.iter().filter(|a| !recorded(a)).cloned());
        order
    }
}

/// Whether a line's host patterns match `name` (already lowercase, `[host]:port` form for a
/// non-22 port), with OpenSSH's rules: hashed names compare an HMAC-SHA1, a negated pattern
/// that matches excludes the line whatever else matches.
fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for pattern in list {
                let pattern = pattern.to_ascii_lowercase();
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob_match(negated.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else if glob_match(pattern.as_bytes(), name.as_bytes()) {
                    positive = true;
                }
            }
            positive
        }
    }
}

/// OpenSSH's wildcard match: `*` any run of characters, `?` exactly one.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Appends `host`:`port`'s key to `path` as OpenSSH would (`[host]:port` for a non-22 port),
/// creating the file 0600 and missing parent directories 0700.
pub(crate) fn record(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<(), TunnelError> {
    let write_err = |source| TunnelError::KnownHostsWrite { path: PathBuf::from(path), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(write_err)?;
    }
    let encoded = key.to_openssh().map_err(|e| write_err(io::Error::other(e.to_string())))?;
    // The key's own comment, if any, is not part of the line OpenSSH writes.
    let mut fields = encoded.split_whitespace();
    let (kind, blob) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());

    let needs_newline = match fs::read(path) {
        Ok(bytes) => bytes.last().is_some_and(|&b| b != b'\n'),
        Err(_) => false,
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    let line = format!(
        "{}{} {kind} {blob}\n",
        if needs_newline { "\n" } else { "" },
        host_entry_name(host, port)
    );
    file.write_all(line.as_bytes()).map_err(write_err)?;
    tracing::info!(host, port, path = %path.display(), "host key recorded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9dG4kjRhQTtWTVzd2t27+t0DEHBPW7iOD23TUiYLio";
    const OTHER_ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn hashed(name: &str) -> String {
        let salt = b"0123456789abcdefghij";
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&k, name.as_bytes());
        use russh::keys::ssh_encoding::base64::{Base64, Encoding};
        format!("|1|{}|{}", Base64::encode_string(salt), Base64::encode_string(tag.as_ref()))
    }

    #[test]
    fn glob_patterns_follow_openssh() {
        assert!(glob_match(b"*.example.com", b"bastion.example.com"));
        assert!(glob_match(b"10.0.0.?", b"10.0.0.5"));
        assert!(!glob_match(b"10.0.0.?", b"10.0.0.55"));
        assert!(glob_match(b"[*]:2222", b"[10.1.2.3]:2222"));
        assert!(!glob_match(b"bastion", b"bastion2"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn plain_bracketed_and_hashed_names_match_the_host() {
        let text = format!(
            "# a comment\n\nbastion,10.0.0.5 {ED25519} me@laptop\n[other]:2222 {OTHER_ED25519}\n\
             {} {ED25519}\n",
            hashed("[hashed]:2200")
        );
        assert_eq!(HostKeys::parse(&text, "10.0.0.5", 22).verdict(&key(ED25519)), Verdict::Trusted);
        assert_eq!(HostKeys::parse(&text, "BASTION", 22).verdict(&key(ED25519)), Verdict::Trusted);
        assert_eq!(
            HostKeys::parse(&text, "other", 2222).verdict(&key(OTHER_ED25519)),
            Verdict::Trusted
        );
        // The same host on another port is another host.
        assert_eq!(HostKeys::parse(&text, "other", 22).verdict(&key(ED25519)), Verdict::Unknown);
        assert_eq!(HostKeys::parse(&text, "hashed", 2200).verdict(&key(ED25519)), Verdict::Trusted);
        assert_eq!(HostKeys::parse(&text, "hashed", 22).verdict(&key(ED25519)), Verdict::Unknown);
    }

    #[test]
    fn negated_pattern_excludes_the_line() {
        let text = format!("*.corp,!evil.corp {ED25519}\n");
        assert_eq!(HostKeys::parse(&text, "a.corp", 22).verdict(&key(ED25519)), Verdict::Trusted);
        assert_eq!(
            HostKeys::parse(&text, "evil.corp", 22).verdict(&key(ED25519)),
            Verdict::Unknown
        );
    }

    #[test]
    fn revoked_wins_over_a_trusted_line() {
        let text = format!("bastion {ED25519}\n@revoked * {ED25519}\n");
        assert_eq!(HostKeys::parse(&text, "bastion", 22).verdict(&key(ED25519)), Verdict::Revoked);
    }

    #[test]
    fn cert_authority_line_is_not_trust_in_a_plain_key() {
        let text = format!("@cert-authority bastion {ED25519}\n");
        assert_eq!(HostKeys::parse(&text, "bastion", 22).verdict(&key(ED25519)), Verdict::Unknown);
    }

    #[test]
    fn unknown_marker_is_skipped_not_trusted() {
        let text = format!("@trusted bastion {ED25519}\nnot a key line\n");
        assert_eq!(HostKeys::parse(&text, "bastion", 22).verdict(&key(ED25519)), Verdict::Unknown);
    }

    #[test]
    fn another_key_for_the_host_is_a_change_with_its_fingerprint() {
        let text = format!("bastion {OTHER_ED25519}\n");
        let Verdict::Changed(expected) =
            HostKeys::parse(&text, "bastion", 22).verdict(&key(ED25519))
        else {
            panic!("expected a change");
        };
        assert_eq!(expected, vec![describe(&key(OTHER_ED25519))]);
        assert!(expected[0].contains("SHA256:"));
    }

    #[test]
    fn recorded_algorithms_are_offered_first() {
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDe5LKO243ISoCFZ8WMn34zuqTiS8jgoa/GgC5/AFfH845TKSJrHjx4TXZtyHX5vKZ2klvE5EHxuK8Xp4aG47tvHoZwUf7GOwxUUJIUmibggzydZ1pJ5Y5qCVagt/zS1UTwAnOahM8YUGuxhNvDn41yG5fKq5RRgGkJQY/FmuutWw==";
        let rsa_key = key(rsa);
        let keys = HostKeys { trusted: vec![rsa_key], revoked: vec![] };
        let defaults = russh::Preferred::DEFAULT.key.to_vec();
        let order = keys.preferred_algorithms(&defaults);
        assert!(matches!(order[0], Algorithm::Rsa { .. }), "{order:?}");
        assert_eq!(order.len(), defaults.len());
    }

    #[test]
    fn record_writes_a_bracketed_line_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/ssh/known_hosts");
        record(&path, "127.0.0.1", 2222, &key(ED25519)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("[127.0.0.1]:2222 {ED25519}\n"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let parent = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let keys = HostKeys::load(&path, "127.0.0.1", 2222).unwrap();
        assert_eq!(keys.verdict(&key(ED25519)), Verdict::Trusted);
    }
}
