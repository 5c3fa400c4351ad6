//! TLS as the endpoint expects it: we dial the local forward but verify the certificate as the
//! endpoint's name (SNI and hostname check), with the system roots or `REDIS_CA_CERT`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::ProbeError;
use crate::target::{Target, TlsMode};

/// The client configuration for `mode`, or `None` for plain text.
pub(crate) fn client_config(mode: &TlsMode) -> Result<Option<Arc<ClientConfig>>, ProbeError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions");
    let config = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::Verify { ca_cert } => {
            let roots = match ca_cert {
                Some(path) => roots_from_file(path)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// A configuration that completes any handshake: used to learn whether a server speaks TLS.
pub(crate) fn probe_config() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

/// The name the certificate must hold: the endpoint's, never the forward's address.
pub(crate) fn server_name(target: &Target) -> Result<ServerName<'static>, ProbeError> {
    ServerName::try_from(target.host.clone()).map_err(|err| ProbeError::Tls {
        target: target.describe(),
        detail: format!("`{}` is not a valid TLS server name ({err})", target.host),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ProbeError> {
    let fail = |detail: String| ProbeError::CaCert { path: path.to_owned(), detail };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|err| fail(err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| fail(err.to_string()))?;
    if certs.is_empty() {
        return Err(fail("it holds no `BEGIN CERTIFICATE` block".to_string()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|err| fail(err.to_string()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, ProbeError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(err) => err.to_string(),
            None => "the store is empty".to_string(),
        };
        return Err(ProbeError::NoRoots { detail });
    }
    for err in &found.errors {
        tracing::debug!(%err, "skipped part of the system certificate store");
    }
    Ok(roots)
}

/// What a failed handshake means, when rustls says; `None` for a plain I/O failure (the caller
/// decides between a timeout, a closed connection and the rest).
pub(crate) fn classify(err: &io::Error, target: &Target) -> Option<ProbeError> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let described = target.describe();
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => ProbeError::TlsNameMismatch {
            target: described,
            expected: target.host.clone(),
            presented: presented.iter().map(|name| clean_name(name)).collect(),
        },
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            ProbeError::TlsNameMismatch {
                target: described,
                expected: target.host.clone(),
                presented: Vec::new(),
            }
        }
        // A CA file whose certificate has the right subject but another key fails the
        // signature instead of the lookup: the same mistake for the user.
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            let ca_cert = match &target.tls {
                TlsMode::Verify { ca_cert } => ca_cert.clone(),
                _ => None,
            };
            ProbeError::TlsUnknownCa { target: described, ca_cert }
        }
        rustls::Error::InvalidMessage(_) => ProbeError::TlsNotSpoken { target: described },
        other => ProbeError::Tls { target: described, detail: other.to_string() },
    })
}

/// `DnsName("cache.example.com")`, as rustls renders a presented name, back to the bare name.
fn clean_name(presented: &str) -> String {
    let inner =
        presented.split_once('(').and_then(|(_, rest)| rest.strip_suffix(')')).unwrap_or(presented);
    inner.trim_matches('"').to_string()
}

/// Accepts every certificate but still checks the handshake signatures (`--insecure`, and the
/// "does it speak TLS" probe).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(clean_name("DnsName(\"cache.mesh.test\")"), "cache.mesh.test");
        assert_eq!(clean_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(clean_name("cache.mesh.test"), "cache.mesh.test");
    }
}
