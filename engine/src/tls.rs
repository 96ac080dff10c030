//! TLS for the senders and the simulator: HTTP/2 (ALPN `h2`) client and server configurations
//! on rustls, trust roots from the system or a CA file, client certificates in PKCS#12.

use std::{path::Path, sync::Arc};

use rustls::{crypto::ring::default_provider, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// A TLS set-up problem, naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// Certificates of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certificates.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certificates)
}

/// The system trust roots plus those of `extra_ca`.
fn trust_roots(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate must not stop the sender; it is simply not trusted.
        let _ = roots.add(certificate);
    }
    if let Some(path) = extra_ca {
        for certificate in read_certificates(path)? {
            roots.add(certificate).map_err(|e| file_error(path, e))?;
        }
    }
    Ok(roots)
}

/// A client certificate chain and its key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// An HTTP/2 client configuration trusting the system roots plus those of `extra_ca` (e.g. the
/// simulator's authority), presenting `identity` when given (APNs certificate authentication).
pub fn client_config(
    extra_ca: Option<&Path>,
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(trust_roots(extra_ca)?);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTP/2 server configuration from PEM certificate and key files; it accepts (without
/// requiring) client certificates issued by `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certificates = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(client_ca)? {
        roots.add(certificate).map_err(|e| file_error(client_ca, e))?;
    }
    let provider = Arc::new(default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| file_error(client_ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client identity (certificate chain and key) from a PKCS#12 file's bytes.
pub fn read_pkcs12(der: &[u8], password: &str) -> Result<Identity, String> {
    let parsed = openssl::pkcs12::Pkcs12::from_der(der)
        .and_then(|p12| p12.parse2(password))
        .map_err(|e| format!("not a PKCS#12 file this password opens: {e}"))?;
    let certificate = parsed.cert.ok_or("the PKCS#12 file holds no certificate")?;
    let key = parsed.pkey.ok_or("the PKCS#12 file holds no private key")?;
    let mut chain = vec![CertificateDer::from(certificate.to_der().map_err(|e| e.to_string())?)];
    for extra in parsed.ca.into_iter().flatten() {
        chain.push(CertificateDer::from(extra.to_der().map_err(|e| e.to_string())?));
    }
    let key = key.private_key_to_pkcs8().map_err(|e| e.to_string())?;
    Ok((chain, PrivateKeyDer::Pkcs8(key.into())))
}

/// A PKCS#12 file's bytes holding a PEM certificate and key, protected by `password`.
pub fn pkcs12(certificate_pem: &str, key_pem: &str, password: &str) -> Result<Vec<u8>, String> {
    let certificate =
        openssl::x509::X509::from_pem(certificate_pem.as_bytes()).map_err(|e| e.to_string())?;
    let key =
        openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    openssl::pkcs12::Pkcs12::builder()
        .name("apns")
        .pkey(&key)
        .cert(&certificate)
        .build2(password)
        .and_then(|p12| p12.to_der())
        .map_err(|e| format!("building a PKCS#12 file: {e}"))
}
