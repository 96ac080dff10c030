//! Credentials for a simulator deployment: a certificate authority (which clients add as a trust
//! root) and the server certificate it signs, an APNs signing key (`.p8`), an APNs client
//! certificate in PKCS#12 (the certificate alternative to provider tokens) and an FCM
//! service-account JSON whose `token_uri` points at the simulator, each with the public half the
//! simulator verifies with.

use std::path::{Path, PathBuf};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

/// Files written by [`write`] into one directory.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    /// The certificate authority (trust root for clients; it also signs client certificates).
    pub ca_certificate: PathBuf,
    /// The server certificate, signed by the authority.
    pub certificate: PathBuf,
    /// The server's TLS key.
    pub server_key: PathBuf,
    /// APNs signing key, PKCS#8 PEM.
    pub apns_key: PathBuf,
    /// Its public key.
    pub apns_public_key: PathBuf,
    /// FCM service account JSON.
    pub fcm_service_account: PathBuf,
    /// Its public key.
    pub fcm_public_key: PathBuf,
    /// APNs client certificate and key, PKCS#12.
    pub apns_p12: PathBuf,
    /// The PKCS#12 file's password.
    pub apns_p12_password: PathBuf,
}

impl CredentialFiles {
    /// The file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_certificate: dir.join("sim-ca.pem"),
            certificate: dir.join("sim-cert.pem"),
            server_key: dir.join("sim-key.pem"),
            apns_key: dir.join("apns-key.p8"),
            apns_public_key: dir.join("apns-key.pub.pem"),
            fcm_service_account: dir.join("fcm-service-account.json"),
            fcm_public_key: dir.join("fcm-key.pub.pem"),
            apns_p12: dir.join("apns-cert.p12"),
            apns_p12_password: dir.join("apns-cert.password"),
        }
    }
}

/// Service account e-mail of generated FCM credentials.
pub const FCM_CLIENT_EMAIL: &str = "herald-sim@herald-sim.iam.gserviceaccount.com";
/// Project id of generated FCM credentials.
pub const FCM_PROJECT: &str = "herald-sim";

/// Generates every credential for a simulator reachable at `origin` (`https://host:port`) with
/// a certificate for `hosts`, unless the files already exist.
pub fn write(dir: &Path, origin: &str, hosts: &[String]) -> Result<CredentialFiles, String> {
    let files = CredentialFiles::in_dir(dir);
    if files.apns_p12_password.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let fail = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Herald simulator CA");
    let ca = ca_params.self_signed(&ca_key).map_err(fail)?;
    write(&files.ca_certificate, &ca.pem())?;

    let server_key = rcgen::KeyPair::generate().map_err(fail)?;
    let server = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(fail)?
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(fail)?;
    write(&files.certificate, &server.pem())?;
    write(&files.server_key, &server_key.serialize_pem())?;

    let client_key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Apple Push Services: com.example.shop");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).map_err(fail)?;
    let password = format!("{:016x}", fastrand::u64(..));
    let p12 = crate::tls::pkcs12(&client.pem(), &client_key.serialize_pem(), &password)
        .map_err(|e| e.to_string())?;
    std::fs::write(&files.apns_p12, p12)
        .map_err(|e| format!("writing {}: {e}", files.apns_p12.display()))?;

    let apns = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    write(&files.apns_key, &apns.serialize_pem())?;
    write(&files.apns_public_key, &apns.public_key_pem())?;

    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| format!("generating an RSA key: {e}"))?;
    let private = rsa.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?;
    let public = rsa::RsaPublicKey::from(&rsa)
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let account = json!({
        "type": "service_account",
        "project_id": FCM_PROJECT,
        "private_key_id": "sim",
        "private_key": private.as_str(),
        "client_email": FCM_CLIENT_EMAIL,
        "token_uri": format!("{origin}/token"),
    });
    write(&files.fcm_service_account, &serde_json::to_string_pretty(&account).unwrap_or_default())?;
    write(&files.fcm_public_key, &public)?;
    // Last: its presence marks a complete set.
    write(&files.apns_p12_password, &password)?;
    Ok(files)
}
