//! TLS for the worker's QUIC endpoint, and the client's pinned-CA verification.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The DNS name in every worker certificate; the client checks it.
pub const WORKER_SERVER_NAME: &str = "worker.sluice.internal";

/// The crypto provider used everywhere: ring (aws-lc-rs costs ~90 s of build), with
/// TLS_AES_128_GCM_SHA256 first. ring's default puts TLS_AES_256_GCM_SHA384 first, whose key
/// schedule hashes with SHA-384: every `-transport tls` connection runs that key schedule
/// (resumed or not), and SHA-256 has this CPU's SHA extensions.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// SHA-256 of a certificate's DER: how tokens pin the cluster CA.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The worker's TLS 1.3 configuration, shared by its QUIC and TLS listeners.
pub fn rustls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![sluice_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The client's TLS 1.3 configuration, pinned to the cluster CA as for QUIC.
pub fn rustls_client_config(
    ca_fingerprint: [u8; 32],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: ca_fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![sluice_proto::ALPN.to_vec()];
    Ok(tls)
}

/// The worker's TLS configuration for its link to the controller: the controller must chain
/// to the cluster CA with `ca_fingerprint`; `client` is the worker's certificate chain and
/// key (absent while activating).
pub fn cluster_client_config(
    ca_fingerprint: [u8; 32],
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: ca_fingerprint,
            provider,
        }));
    let mut tls = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![sluice_proto::cluster::CLUSTER_ALPN.to_vec()];
    Ok(tls)
}

/// Verifies a worker against the CA pinned in the token: the worker sends the CA certificate as
/// the last element of its chain; it is trusted only if its SHA-256 matches the pin, and then
/// the ordinary WebPKI checks run with it as the only root.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the peer's certificate does not chain to the pinned cluster CA".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("verifier: {e}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The `tls` transport makes one TLS connection per proxied connection. With the session's
    /// one client configuration, every connection after the first resumes the first's TLS
    /// session: no certificate is sent or verified again.
    #[tokio::test]
    async fn a_second_tls_connection_of_a_session_resumes_the_first() {
        let ca = sluice_controlplane::pki::ClusterCa::generate().unwrap();
        let (cert, key) = ca.issue(WORKER_SERVER_NAME).unwrap();
        let server = rustls_server_config(
            vec![cert.into(), ca.cert().to_vec().into()],
            PrivateKeyDer::try_from(key).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(
            rustls_client_config(ca.fingerprint()).unwrap(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    tls.write_all(b"x").await.unwrap();
                    let mut rest = Vec::new();
                    let _ = tls.read_to_end(&mut rest).await;
                });
            }
        });
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from(WORKER_SERVER_NAME).unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            // Reading takes in the session tickets the worker sends after its handshake.
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
            tls.shutdown().await.unwrap();
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    }
}
