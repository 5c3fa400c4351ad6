//! Throwaway ed25519 keys for the sandbox bastion: its host key, recorded in a
//! sandbox `known_hosts`, and the one user key it accepts.

use crate::net::random_seed;
use crate::{Result, SandboxError};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A fresh ed25519 key from the operating system's random source.
pub(crate) fn generate_ed25519(comment: &str) -> Result<PrivateKey> {
    let keypair = Ed25519Keypair::from_seed(&random_seed()?);
    PrivateKey::new(KeypairData::from(keypair), comment)
        .map_err(|err| SandboxError::Random(format!("could not build an ed25519 key: {err}")))
}

/// Writes `key` as an OpenSSH private key file readable by its owner only
/// (OpenSSH refuses a key others can read), and its `.pub` next to it.
pub(crate) fn write_private_key(path: &Path, key: &PrivateKey) -> Result<()> {
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| SandboxError::Key { path: path.to_path_buf(), source })?;
    write_file(path, pem.as_bytes(), 0o600)?;

    let public = key
        .public_key()
        .to_openssh()
        .map_err(|source| SandboxError::Key { path: path.to_path_buf(), source })?;
    write_file(&path.with_extension("pub"), format!("{public}\n").as_bytes(), 0o644)
}

/// Writes a `known_hosts` naming the bastion as OpenSSH records a non-standard
/// port: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
pub(crate) fn write_known_hosts(path: &Path, port: u16, host_key: &PublicKey) -> Result<()> {
    let mut public = host_key.clone();
    public.set_comment("");
    let public = public
        .to_openssh()
        .map_err(|source| SandboxError::Key { path: path.to_path_buf(), source })?;
    write_file(path, format!("[127.0.0.1]:{port} {}\n", public.trim()).as_bytes(), 0o644)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|err| SandboxError::io("create", path, err))?;
    file.write_all(contents).map_err(|err| SandboxError::io("write", path, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn user_key_is_private_and_reads_back_as_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let key = generate_ed25519("test").unwrap();
        write_private_key(&path, &key).unwrap();

        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = PrivateKey::from_openssh(std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.public_key().key_data(), key.public_key().key_data());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    }

    #[test]
    fn known_hosts_line_names_the_loopback_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let key = generate_ed25519("host").unwrap();
        write_known_hosts(&path, 2222, key.public_key()).unwrap();

        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.starts_with("[127.0.0.1]:2222 ssh-ed25519 AAAA"), "{line}");
        assert_eq!(line.lines().count(), 1);
    }
}
