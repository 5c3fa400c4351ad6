//! A throwaway certificate authority and a server certificate for one DNS name, made with the
//! `openssl` command (already needed by CI, and lighter than a Rust crypto crate).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_checked;
use crate::require;

/// Paths of the files written by [`generate`].
pub(crate) struct CertFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir`. The server certificate names only
/// `dns_name` (no IP address), so a client that checks it against `127.0.0.1` fails as it
/// would against a real endpoint reached through a tunnel.
pub(crate) fn generate(dir: &Path, dns_name: &str) -> CertFiles {
    let openssl = require("openssl");
    let files = CertFiles {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let ca_key = dir.join("ca.key");
    let csr = dir.join("server.csr");
    let extensions = dir.join("openssl-ext.cnf");
    fs::write(&extensions, extensions_config(dns_name))
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", extensions.display()));

    let mut ca = Command::new(&openssl);
    ca.args(["req", "-x509", "-new", "-nodes", "-days", "7", "-sha256"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-subj", "/CN=mesh-testkit CA", "-config"])
        .arg(&extensions)
        .args(["-extensions", "ca"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&files.ca_cert);
    run_checked(&mut ca, "openssl req (test CA)");

    let mut request = Command::new(&openssl);
    request
        .args(["req", "-new", "-nodes", "-sha256"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-subj")
        .arg(format!("/CN={dns_name}"))
        .arg("-config")
        .arg(&extensions)
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&csr);
    run_checked(&mut request, "openssl req (server key)");

    let mut sign = Command::new(&openssl);
    sign.args(["x509", "-req", "-days", "7", "-sha256", "-set_serial", "2"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&files.ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&extensions)
        .args(["-extensions", "server"])
        .arg("-out")
        .arg(&files.cert);
    run_checked(&mut sign, "openssl x509 (sign server certificate)");
    files
}

/// A self-contained openssl config, so the system's `openssl.cnf` adds nothing unexpected.
/// rustls/webpki want a CA with key usage and an end-entity with a SAN and serverAuth.
fn extensions_config(dns_name: &str) -> String {
    format!(
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         [ca]\n\
         basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:{dns_name}\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n"
    )
}
