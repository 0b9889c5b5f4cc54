//! TLS for the relay: the server's certificate (PEM files, or a self-signed one generated once
//! and kept in the state directory) and the client's verification (web PKI roots, or a pinned
//! SHA-256 fingerprint of the server's certificate as the relay map may carry).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::atomic_file;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate, lowercase hex (the form `CertSHA256` in the relay map takes).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A server certificate chain and key, ready for [`server_config`].
pub struct ServerCert {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl ServerCert {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerCert> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading certificate {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificate {}", cert.display()))?;
        if chain.is_empty() {
            bail!("{} holds no PEM certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading private key {}", key.display()))?;
        Ok(ServerCert { chain, key })
    }

    /// The self-signed certificate for `hostname` kept in `dir` (`relay-<hostname>.crt` and
    /// `.key`), generated and written atomically (key mode 0600) on first use.
    pub fn self_signed(dir: &Path, hostname: &str) -> Result<ServerCert> {
        if hostname.is_empty() || hostname.contains(['/', '\0']) {
            bail!("bad relay hostname {hostname:?}");
        }
        let cert_path = dir.join(format!("relay-{hostname}.crt"));
        let key_path = dir.join(format!("relay-{hostname}.key"));
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate().context("generating a key")?;
            let cert = rcgen::CertificateParams::new(vec![hostname.to_string()])
                .context("certificate parameters")?
                .self_signed(&key)
                .context("self-signing the certificate")?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            atomic_file::write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            atomic_file::write(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        ServerCert::from_pem_files(&cert_path, &key_path)
    }

    /// The leaf's SHA-256 fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// The rustls server configuration for a relay (HTTP/1.1 only).
pub fn server_config(cert: ServerCert) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(|e| anyhow!("the certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How a client checks a relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Web PKI roots and the host name.
    WebPki,
    /// The leaf's SHA-256 must be this (lowercase hex); names and dates are not checked.
    Pinned(String),
    /// Nothing is checked (labs only; the relay map's `InsecureForTests`).
    Insecure,
}

/// The rustls client configuration for `verification`.
pub fn client_config(verification: &Verification) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS versions: {e}"))?;
    let mut cfg = match verification {
        Verification::WebPki => {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verification::Pinned(hex) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                sha256: hex.to_ascii_lowercase(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        Verification::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                sha256: String::new(),
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts exactly the certificate with a given SHA-256 (any, if the pin is empty), and
/// still checks the handshake signatures made with it.
#[derive(Debug)]
struct PinnedCert {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.sha256.is_empty() || fingerprint(end_entity) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "relay certificate SHA-256 {} is not the pinned {}",
                fingerprint(end_entity),
                self.sha256
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
