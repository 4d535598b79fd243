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
