//! QUIC's settings and configurations: transport windows, stream limits, the idle timeout,
//! path MTU discovery up to 16 KiB, congestion control, and the quinn configs built from the
//! TLS configurations in `tls.rs`. `udp.rs` is the endpoint's socket, `congestion.rs` the
//! controller.

pub(crate) mod congestion;
pub(crate) mod udp;

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
#[cfg(test)]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::rustls_client_config;
#[cfg(test)]
use crate::tls::{fingerprint, rustls_server_config, WORKER_SERVER_NAME};

/// A client not heard from for this long is gone (killed, or its network is): its session
/// ends with `network error`. Clients send keep-alives at a third of it, so idle sessions
/// survive, and middleboxes keep their UDP mappings.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Proxied connections one session may have open at once. quinn keeps a few hundred bytes per
/// open stream, and a client that opens more simply waits for one to close.
pub const MAX_STREAMS: u32 = 32_768;

/// Streams a session may open before the worker raises its limit (doubling it, up to
/// [`MAX_STREAMS`], as the session's open streams pass half of it; see `worker/mod.rs`).
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
    mtu.upper_bound(crate::quic::udp::MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // quinn's Cubic, wrapped so that a close is never held back by a full window
    // (congestion.rs).
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(crate::quic::udp::INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(crate::quic::congestion::ClosingCubicFactory(
        Arc::new(cubic),
    )));
    if client {
        t.keep_alive_interval(Some(IDLE_TIMEOUT / 3));
    }
    t
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
    let server = crate::quic::udp::endpoint(crate::net::loopback_udp(), Some(server_cfg)).unwrap();
    let mut client = crate::quic::udp::endpoint(crate::net::loopback_udp(), None).unwrap();
    client.set_default_client_config(client_cfg);
    let connecting = client
        .connect(server.local_addr().unwrap(), WORKER_SERVER_NAME)
        .unwrap();
    let (c, s) = tokio::join!(connecting, async {
        server.accept().await.unwrap().await.unwrap()
    });
    (server, client, s, c.unwrap())
}
