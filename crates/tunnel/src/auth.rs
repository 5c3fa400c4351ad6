//! Public-key authentication: the configured key file first, then ssh-agent, never more
//! keys than a server's MaxAuthTries allows.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{AuthResult, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_key::{self, HashAlg, PrivateKey, PublicKey};
use russh::keys::PrivateKeyWithHashAlg;

use crate::session::Client;
use crate::spec::{Target, TunnelSpec};
use crate::TunnelError;

/// sshd's MaxAuthTries is 6 by default and each offered key counts: stay below it.
const MAX_KEYS_OFFERED: usize = 5;

/// The key file, decrypted once at start so a reconnect never asks again.
#[derive(Clone)]
pub(crate) struct Credentials {
    key: Option<(PathBuf, Arc<PrivateKey>)>,
    agent: Option<PathBuf>,
}

impl Credentials {
    pub fn load(target: &Target, spec: &TunnelSpec) -> Result<Credentials, TunnelError> {
        let key = match &target.key_file {
            Some(path) => Some((path.clone(), Arc::new(load_key(path, spec)?))),
            None => None,
        };
        Ok(Credentials { key, agent: spec.agent.clone() })
    }
}

/// Reads a private key as OpenSSH would: refuse it when others may read it, decrypt it with
/// the given passphrase or one asked on the terminal, name the fix for a format we can't read.
pub(crate) fn load_key(path: &Path, spec: &TunnelSpec) -> Result<PrivateKey, TunnelError> {
    let unreadable = |source| TunnelError::KeyUnreadable { path: path.into(), source };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    if !metadata.is_file() {
        let not_a_file = std::io::Error::other("it is not a regular file");
        return Err(unreadable(not_a_file));
    }
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TunnelError::KeyPermissions { path: path.into(), mode: mode & 0o7777 });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let unsupported = |detail: &str| TunnelError::UnsupportedKeyFormat {
        path: path.into(),
        detail: detail.to_string(),
    };
    let text = String::from_utf8(bytes).map_err(|_| unsupported("not a text key file"))?;

    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| unsupported(&format!("unreadable OpenSSH key ({e})")))?;
        if !key.is_encrypted() {
            return Ok(key);
        }
        let passphrase = passphrase_for(path, spec)?;
        return key.decrypt(passphrase.as_bytes()).map_err(|e| match e {
            ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. } => {
                unsupported(&format!("encrypted with an unsupported cipher ({e})"))
            }
            // A wrong passphrase shows up as a failed check or a garbled key.
            _ => TunnelError::WrongPassphrase { path: path.into() },
        });
    }

    let pem_encrypted = text.contains("ENCRYPTED");
    let known_pem =
        ["RSA PRIVATE KEY", "EC PRIVATE KEY", "BEGIN PRIVATE KEY", "ENCRYPTED PRIVATE KEY"]
            .iter()
            .any(|tag| text.contains(tag));
    if !known_pem && !text.starts_with("PuTTY-User-Key-File-") {
        return Err(unsupported("not a format this tool reads (OpenSSH, PEM, PKCS#8, PuTTY)"));
    }
    if text.contains("DEK-Info:") && !text.contains("DEK-Info: AES-128-CBC") {
        return Err(unsupported("legacy PEM encryption other than AES-128-CBC"));
    }
    if !pem_encrypted {
        return russh::keys::decode_secret_key(&text, None)
            .map_err(|e| unsupported(&e.to_string()));
    }
    let passphrase = passphrase_for(path, spec)?;
    russh::keys::decode_secret_key(&text, Some(&passphrase))
        .map_err(|_| TunnelError::WrongPassphrase { path: path.into() })
}

/// The passphrase from the spec, else asked once on the terminal, else an error that says
/// how to give one.
fn passphrase_for(path: &Path, spec: &TunnelSpec) -> Result<String, TunnelError> {
    if let Some(secret) = &spec.passphrase {
        return Ok(secret.expose().to_string());
    }
    if !spec.interactive {
        return Err(TunnelError::KeyNeedsPassphrase { path: path.into() });
    }
    rpassword::prompt_password(format!("Enter passphrase for key '{}': ", path.display()))
        .map_err(|_| TunnelError::KeyNeedsPassphrase { path: path.into() })
}

/// Offers the key file, then the agent's keys, until one is accepted.
pub(crate) async fn authenticate(
    handle: &mut Handle<Client>,
    target: &Target,
    credentials: &Credentials,
) -> Result<(), TunnelError> {
    let mut tried = Vec::new();
    let ssh_err =
        |source| TunnelError::Ssh { host: target.host.clone(), port: target.port, source };

    if let Some((path, key)) = &credentials.key {
        let hash = rsa_hash(handle, key.public_key()).await;
        let offered = PrivateKeyWithHashAlg::new(key.clone(), hash);
        tracing::debug!(path = %path.display(), "offering key file");
        let result = handle.authenticate_publickey(&target.user, offered).await.map_err(ssh_err)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!(
            "{} ({})",
            path.display(),
            key.public_key().fingerprint(HashAlg::Sha256)
        ));
    }

    if let Some(socket) = &credentials.agent {
        match agent_auth(handle, target, socket, credentials, &mut tried).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "ssh-agent unusable, skipped")
            }
        }
    }

    if tried.is_empty() {
        return Err(TunnelError::NoCredentials {
            user: target.user.clone(),
            host: target.host.clone(),
            port: target.port,
        });
    }
    Err(TunnelError::AuthRejected {
        user: target.user.clone(),
        host: target.host.clone(),
        port: target.port,
        tried,
    })
}

async fn agent_auth(
    handle: &mut Handle<Client>,
    target: &Target,
    socket: &Path,
    credentials: &Credentials,
    tried: &mut Vec<String>,
) -> Result<bool, russh::Error> {
    let mut agent = AgentClient::connect_uds(socket).await?;
    let identities = agent.request_identities().await?;
    let file_key = credentials.key.as_ref().map(|(_, k)| k.public_key().key_data().clone());
    for identity in identities {
        let AgentIdentity::PublicKey { key, comment } = identity else { continue };
        if tried.len() >= MAX_KEYS_OFFERED {
            tracing::warn!(offered = tried.len(), "more agent keys left unoffered (MaxAuthTries)");
            break;
        }
        if file_key.as_ref() == Some(key.key_data()) {
            continue;
        }
        let hash = rsa_hash(handle, &key).await;
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        tracing::debug!(%fingerprint, "offering agent key");
        match handle.authenticate_publickey_with(&target.user, key, hash, &mut agent).await {
            Ok(AuthResult::Success) => return Ok(true),
            Ok(AuthResult::Failure { .. }) => {}
            Err(e) => tracing::warn!(%fingerprint, error = ?e, "agent could not sign"),
        }
        tried.push(format!("agent key {comment} ({fingerprint})"));
    }
    Ok(false)
}

/// For an RSA key, the strongest hash the server advertises in server-sig-algs; SHA-256 when
/// it advertises nothing, since current servers refuse SHA-1 (`ssh-rsa`) signatures.
async fn rsa_hash(handle: &Handle<Client>, key: &PublicKey) -> Option<HashAlg> {
    if !key.algorithm().is_rsa() {
        return None;
    }
    match handle.best_supported_rsa_hash().await {
        Ok(Some(best)) => best,
        Ok(None) | Err(_) => Some(HashAlg::Sha256),
    }
}
