//! A throwaway certificate authority and one server certificate for the
//! sandbox's endpoint name, made with the `openssl` command, so the local
//! Redis can speak TLS the way ElastiCache Serverless does.
//!
//! The server certificate names the endpoint only (no `127.0.0.1`): a client
//! dialling the forward must verify it as the endpoint's name, as it must in
//! a real VPC. The CA's key is deleted once it has signed, so nothing else can
//! ever be issued under that CA.

use crate::net::random_token;
use crate::{Result, SandboxError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tracing::debug;

/// The command that installs `openssl` on Debian and Ubuntu.
pub const OPENSSL_INSTALL_COMMAND: &str = "apt-get install -y openssl";

/// How long the certificates are valid: a sandbox lives for a session.
const VALID_DAYS: &str = "2";

/// The files of a TLS-only Redis, all inside the sandbox directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The throwaway CA's certificate (PEM): what a client trusts.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), for `server_name` only.
    pub cert: PathBuf,
    /// The server's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The DNS name in the server certificate: the endpoint's.
    pub server_name: String,
}

impl TlsFiles {
    /// Makes a CA and a certificate for `server_name` in `dir` with `openssl`.
    pub fn generate(dir: &Path, server_name: &str) -> Result<TlsFiles> {
        let openssl = which::which("openssl").map_err(|_| SandboxError::OpensslMissing {
            install: OPENSSL_INSTALL_COMMAND.to_string(),
        })?;
        let files = TlsFiles {
            ca_cert: dir.join("tls-ca.crt"),
            cert: dir.join("tls-server.crt"),
            key: dir.join("tls-server.key"),
            server_name: server_name.to_string(),
        };
        let ca_key = dir.join("tls-ca.key");
        let csr = dir.join("tls-server.csr");
        let extensions = dir.join("tls-server.ext");
        let run = |step: &'static str, args: &[&std::ffi::OsStr]| openssl_run(&openssl, step, args);
        let os = |text: &'static str| std::ffi::OsStr::new(text);

        // The keys' files exist, private, before openssl writes into them.
        private_file(&ca_key, b"")?;
        private_file(&files.key, b"")?;
        for key in [&ca_key, &files.key] {
            run(
                "make a key",
                &[
                    os("genpkey"),
                    os("-algorithm"),
                    os("EC"),
                    os("-pkeyopt"),
                    os("ec_paramgen_curve:P-256"),
                    os("-out"),
                    key.as_os_str(),
                ],
            )?;
        }

        run(
            "make the CA certificate",
            &[
                os("req"),
                os("-x509"),
                os("-new"),
                os("-sha256"),
                os("-days"),
                os(VALID_DAYS),
                os("-key"),
                ca_key.as_os_str(),
                os("-subj"),
                os("/CN=mesh sandbox throwaway CA"),
                os("-addext"),
                os("basicConstraints=critical,CA:TRUE"),
                os("-addext"),
                os("keyUsage=critical,keyCertSign,cRLSign"),
                os("-out"),
                files.ca_cert.as_os_str(),
            ],
        )?;

        let subject = format!("/CN={server_name}");
        run(
            "make the certificate request",
            &[
                os("req"),
                os("-new"),
                os("-key"),
                files.key.as_os_str(),
                os("-subj"),
                subject.as_ref(),
                os("-out"),
                csr.as_os_str(),
            ],
        )?;

        // The name goes in subjectAltName: clients ignore the CN.
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{server_name}\n"
        );
        std::fs::write(&extensions, ext)
            .map_err(|err| SandboxError::io("write", &extensions, err))?;
        let serial = format!("0x{}", hex_serial()?);
        run(
            "sign the server certificate",
            &[
                os("x509"),
                os("-req"),
                os("-sha256"),
                os("-days"),
                os(VALID_DAYS),
                os("-in"),
                csr.as_os_str(),
                os("-CA"),
                files.ca_cert.as_os_str(),
                os("-CAkey"),
                ca_key.as_os_str(),
                os("-set_serial"),
                serial.as_ref(),
                os("-extfile"),
                extensions.as_os_str(),
                os("-out"),
                files.cert.as_os_str(),
            ],
        )?;

        for spent in [&ca_key, &csr, &extensions] {
            std::fs::remove_file(spent).map_err(|err| SandboxError::io("remove", spent, err))?;
        }
        debug!(%server_name, ca = %files.ca_cert.display(), "sandbox certificates made");
        Ok(files)
    }
}

/// Runs one `openssl` step; a failure carries openssl's own words.
fn openssl_run(openssl: &Path, step: &'static str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let output = Command::new(openssl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SandboxError::Spawn { program: openssl.to_path_buf(), source })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(SandboxError::Openssl {
        step,
        status: output.status.to_string(),
        stderr: stderr.lines().take(3).collect::<Vec<_>>().join(" | "),
    })
}

/// Creates `path` with mode 0600 holding `bytes`.
pub(crate) fn private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| SandboxError::io("create", path, err))?;
    file.write_all(bytes).map_err(|err| SandboxError::io("write", path, err))
}

/// A random positive serial number, as hex digits.
fn hex_serial() -> Result<String> {
    let token = random_token(16)?;
    // Positive and non-zero: a leading digit 1-7 keeps the top bit clear.
    let digits: String = token.bytes().map(|b| format!("{:x}", b % 16)).collect();
    Ok(format!("1{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificate_names_the_endpoint_only_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let name = "sandbox-test01.serverless.use1.cache.amazonaws.com";
        let files = TlsFiles::generate(dir.path(), name).unwrap();

        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let verify = |flag: &str, value: &str| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&files.ca_cert)
                .args([flag, value])
                .arg(&files.cert)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify("-verify_hostname", name));
        assert!(!verify("-verify_ip", "127.0.0.1"));
        assert!(!verify("-verify_hostname", "localhost"));

        // Only what Redis and its clients need is left: no CA key, no request.
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["tls-ca.crt", "tls-server.crt", "tls-server.key"]);
    }

    #[test]
    fn missing_openssl_error_gives_the_install_command() {
        let err = SandboxError::OpensslMissing { install: OPENSSL_INSTALL_COMMAND.to_string() };
        assert_eq!(
            err.to_string(),
            "`openssl` is not installed; the sandbox needs it to make its TLS certificates: \
             install it with `apt-get install -y openssl` and retry"
        );
    }
}
