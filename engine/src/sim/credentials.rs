//! Credentials for a simulator deployment: the server's self-signed certificate (which clients
//! add as a trust root), an APNs signing key (`.p8`) and an FCM service-account JSON whose
//! `token_uri` points at the simulator, each with the public half the simulator verifies with.

use std::path::{Path, PathBuf};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

/// Files written by [`write`] into one directory.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    /// The server certificate (trust root for clients).
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
}

impl CredentialFiles {
    /// The file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            certificate: dir.join("sim-cert.pem"),
            server_key: dir.join("sim-key.pem"),
            apns_key: dir.join("apns-key.p8"),
            apns_public_key: dir.join("apns-key.pub.pem"),
            fcm_service_account: dir.join("fcm-service-account.json"),
            fcm_public_key: dir.join("fcm-key.pub.pem"),
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
    if files.fcm_public_key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let (certificate, key) = crate::tls::self_signed(hosts).map_err(|e| e.to_string())?;
    write(&files.certificate, &certificate)?;
    write(&files.server_key, &key)?;

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
    Ok(files)
}
