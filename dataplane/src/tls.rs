//! TLS for the worker's QUIC endpoint, and the client's pinned-CA verification.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
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

/// A client not heard from for this long is gone (killed, or its network is): its session
/// ends with `network error`. Clients send keep-alives at a third of it, so idle sessions
/// survive, and middleboxes keep their UDP mappings.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Proxied connections one session may have open at once. quinn keeps a few hundred bytes per
/// open stream, and a client that opens more simply waits for one to close.
pub const MAX_STREAMS: u32 = 32_768;

/// Streams a session may open before the worker raises its limit (doubling it, up to
/// [`MAX_STREAMS`], as the session's open streams pass half of it; see `server.rs`).
///
/// quinn allocates state for every stream the peer may open when the limit is set: at
/// [`MAX_STREAMS`] that was 2 × 32,768 hash-map entries (about 2 MB) and a few milliseconds of
/// inserting and rehashing per connection, on both ends, before the first packet went out.
pub const INITIAL_STREAMS: u32 = 256;

/// Transport settings for one end: windows sized for loopback and LAN bandwidth-delay
/// products, and an idle timeout that ends the sessions of a client that vanished. A client
/// (`client`) sends keep-alives and accepts no streams (the worker never opens one); the
/// worker starts at [`INITIAL_STREAMS`].
///
/// The send window is twice the peer's connection window: quinn counts acknowledged bytes
/// against it until the whole chunk they came in (up to 256 KiB from a relay) is freed, so
/// with many streams a window equal to the peer's left credit unused. 64 MiB ran the
/// 1,000-stream round faster than 32 MiB in 6 of 7 interleaved pairs (docs/design.md). What
/// is unacknowledged is still bounded by the peer's 32 MiB.
pub fn transport_config(client: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let streams = if client { 0 } else { INITIAL_STREAMS };
    t.max_concurrent_bidi_streams(streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(64 << 20)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s is a valid idle timeout"),
        ));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(crate::udp::MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // quinn's Cubic, wrapped so that a close is never held back by a full window
    // (congestion.rs).
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(crate::udp::INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(crate::congestion::ClosingCubicFactory(Arc::new(
        cubic,
    ))));
    if client {
        t.keep_alive_interval(Some(IDLE_TIMEOUT / 3));
    }
    t
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

/// The worker's QUIC server configuration.
pub fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, rustls::Error> {
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("quic server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(false)));
    Ok(cfg)
}

/// The client's QUIC configuration: trusts only a worker whose chain includes the CA with
/// `ca_fingerprint` (pinned in the token) and whose certificate that CA signed.
pub fn client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, rustls::Error> {
    let tls = rustls_client_config(ca_fingerprint)?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("quic client config: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(true)));
    Ok(cfg)
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

/// A worker's QUIC server configuration with a fresh cluster identity, and a client
/// configuration that trusts it, each with the given transport settings.
#[cfg(test)]
pub(crate) fn loopback_configs(
    worker: quinn::TransportConfig,
    client: quinn::TransportConfig,
) -> (quinn::ServerConfig, quinn::ClientConfig) {
    let id = sluice_controlplane::pki::generate_worker_identity(WORKER_SERVER_NAME).unwrap();
    let ca = CertificateDer::from(id.ca_cert);
    let chain = vec![CertificateDer::from(id.cert), ca.clone()];
    let pk = PrivateKeyDer::Pkcs8(id.key.into());
    let mut server_cfg = server_config(rustls_server_config(chain, pk).unwrap()).unwrap();
    server_cfg.transport_config(Arc::new(worker));
    let mut client_cfg = client_config(fingerprint(&ca)).unwrap();
    client_cfg.transport_config(Arc::new(client));
    (server_cfg, client_cfg)
}

/// A QUIC connection on loopback between a worker's endpoint and a client's, each with the
/// given transport settings. Returns both endpoints (keep them alive), then the worker's side
/// of the connection and the client's.
#[cfg(test)]
pub(crate) async fn loopback_pair(
    worker: quinn::TransportConfig,
    client: quinn::TransportConfig,
) -> (
    quinn::Endpoint,
    quinn::Endpoint,
    quinn::Connection,
    quinn::Connection,
) {
    let (server_cfg, client_cfg) = loopback_configs(worker, client);
    let server = crate::udp::endpoint(crate::net::loopback_udp(), Some(server_cfg)).unwrap();
    let mut client = crate::udp::endpoint(crate::net::loopback_udp(), None).unwrap();
    client.set_default_client_config(client_cfg);
    let connecting = client
        .connect(server.local_addr().unwrap(), WORKER_SERVER_NAME)
        .unwrap();
    let (c, s) = tokio::join!(connecting, async {
        server.accept().await.unwrap().await.unwrap()
    });
    (server, client, s, c.unwrap())
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
