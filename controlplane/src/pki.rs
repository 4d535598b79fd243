//! The cluster CA and worker certificates, and the token-signing key.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde::{Deserialize, Serialize};

/// A worker's TLS identity: its certificate chain (worker, then CA) and key, all DER.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerIdentity {
    /// DER of the worker certificate.
    pub cert: Vec<u8>,
    /// DER of the cluster CA certificate.
    pub ca_cert: Vec<u8>,
    /// PKCS#8 DER of the worker key.
    pub key: Vec<u8>,
}

/// Creates a cluster CA and a worker certificate it signs for `server_name`.
pub fn generate_worker_identity(server_name: &str) -> Result<WorkerIdentity, rcgen::Error> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Sluice cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let worker_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![server_name.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Sluice worker");
    let cert = params.signed_by(&worker_key, &ca, &ca_key)?;
    Ok(WorkerIdentity {
        cert: cert.der().to_vec(),
        ca_cert: ca.der().to_vec(),
        key: worker_key.serialize_der(),
    })
}

/// Name in the certificate of a worker's proxy listener (clients check it).
pub const WORKER_SERVER_NAME: &str = "worker.sluice.internal";
/// Name in the certificate of the controller's cluster listener (workers check it).
pub const CONTROLLER_SERVER_NAME: &str = "controller.sluice.internal";
const CA_NAME: &str = "Sluice cluster CA";

/// The cluster CA of `sluice server`: kept in the store, it signs the certificates of workers
/// (when they activate) and of the controller's cluster listener.
pub struct ClusterCa {
    cert: Vec<u8>,
    key: KeyPair,
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, CA_NAME);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca_params)
}

/// A raw public key received from a worker.
struct RawP256<'a>(&'a [u8]);

impl rcgen::PublicKeyData for RawP256<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl ClusterCa {
    /// A new CA.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuer = ca_params()?.self_signed(&key)?;
        Ok(Self {
            cert: issuer.der().to_vec(),
            key,
            issuer,
        })
    }

    /// The CA from its stored certificate and PKCS#8 key.
    pub fn from_parts(cert: Vec<u8>, key_pkcs8: &[u8]) -> Result<Self, rcgen::Error> {
        let key = KeyPair::try_from(key_pkcs8)?;
        // Signing needs the issuer's name and key only: a certificate rebuilt from the same
        // name and key signs children that chain to the stored certificate.
        let issuer = ca_params()?.self_signed(&key)?;
        Ok(Self { cert, key, issuer })
    }

    /// DER of the CA certificate.
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// PKCS#8 DER of the CA key, for the store.
    pub fn key_pkcs8(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// SHA-256 of the CA certificate, as pinned in tokens and activation tokens.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.cert).into()
    }

    fn leaf_params(
        server_name: &str,
        common_name: &str,
    ) -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(vec![server_name.to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        Ok(params)
    }

    /// Signs a worker's certificate over the public key it sent (a raw uncompressed P-256
    /// point); the worker's private key never leaves it.
    pub fn sign_worker(&self, worker_id: &str, public_key: &[u8]) -> Result<Vec<u8>, String> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err("the public key is not an uncompressed P-256 point".into());
        }
        let params = Self::leaf_params(WORKER_SERVER_NAME, worker_id).map_err(|e| e.to_string())?;
        params
            .signed_by(&RawP256(public_key), &self.issuer, &self.key)
            .map(|c| c.der().to_vec())
            .map_err(|e| e.to_string())
    }

    /// A certificate and key for several names (DNS names or IP addresses).
    pub fn issue_for(&self, names: &[String]) -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice API");
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }

    /// A certificate and key for `server_name` (the controller's cluster listener).
    pub fn issue(&self, server_name: &str) -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = Self::leaf_params(server_name, server_name)?.signed_by(
            &key,
            &self.issuer,
            &self.key,
        )?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }
}

/// A worker's new key pair: the PKCS#8 DER to keep, and the raw public key to send.
pub fn worker_key_pair() -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok((key.serialize_der(), key.public_key_raw().to_vec()))
}
