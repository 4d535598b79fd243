//! The controller's side of the cluster link: a TLS 1.3 listener that workers connect out to.
//!
//! A connection without a client certificate may only activate (redeem a one-time token for a
//! certificate). A worker's link proper is authenticated by the certificate issued to it, which
//! must chain to the cluster CA and be the very certificate recorded for that worker (so
//! deleting a worker revokes it). See `sluice_proto::cluster` for the messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sluice_proto::cluster::{decode, encode, ToController, ToWorker, CLUSTER_ALPN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::controller::Controller;

/// A worker says something (a heartbeat at least) more often than this, or its link is dropped.
const SILENCE_LIMIT: Duration = Duration::from_secs(10);
/// TLS handshake and first message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Links being set up at once; more wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// The TLS configuration of the cluster listener.
pub fn server_tls(controller: &Controller) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = controller.cluster_identity()?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(controller.ca_cert()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::try_from(key).map_err(|e| anyhow::anyhow!("cluster key: {e}"))?,
        )?;
    tls.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
    Ok(tls)
}

/// Serves worker links on `listener` until the task is dropped.
pub async fn serve(controller: Arc<Controller>, listener: TcpListener) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(&controller)?));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    info!(addr = %listener.local_addr()?, "cluster listener up");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let controller = controller.clone();
        let acceptor = acceptor.clone();
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return Ok(());
        };
        tokio::spawn(async move {
            let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let tls = acceptor.accept(tcp).await?;
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| sha256(c));
                let mut tls = tls;
                let mut buf = BytesMut::new();
                let first = read_msg(&mut tls, &mut buf).await?;
                Ok::<_, std::io::Error>((tls, buf, cert, first))
            })
            .await;
            drop(permit);
            match opened {
                Ok(Ok((tls, buf, cert, first))) => link(controller, tls, buf, cert, first).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "cluster link failed to open"),
                Err(_) => debug!(%peer, "cluster link timed out opening"),
            }
        });
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

async fn read_msg<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<ToController> {
    loop {
        match decode::<ToController>(buf) {
            Ok(Some((m, used))) => {
                buf.advance(used);
                return Ok(m);
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(16 * 1024);
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, m: &ToWorker) -> std::io::Result<()> {
    s.write_all(&encode(m)).await?;
    s.flush().await
}

async fn refuse<S: AsyncWrite + Unpin>(mut s: S, message: String) {
    warn!(%message, "cluster link refused");
    let _ = send(&mut s, &ToWorker::Refused { message }).await;
    let _ = s.shutdown().await;
}

async fn link<S: AsyncRead + AsyncWrite + Unpin>(
    controller: Arc<Controller>,
    mut tls: S,
    mut buf: BytesMut,
    cert: Option<[u8; 32]>,
    first: ToController,
) {
    let (worker_id, boot_id, address, tags, version) = match first {
        ToController::Activate {
            activation_token,
            public_key,
        } => {
            match controller
                .activate_worker(&activation_token, &public_key)
                .await
            {
                Ok((worker_id, cert)) => {
                    let m = ToWorker::Activated {
                        worker_id,
                        cert,
                        ca_cert: controller.ca_cert(),
                    };
                    let _ = send(&mut tls, &m).await;
                    let _ = tls.shutdown().await;
                }
                Err(message) => refuse(tls, message).await,
            }
            return;
        }
        ToController::Hello {
            worker_id,
            boot_id,
            address,
            tags,
            version,
        } => (worker_id, boot_id, address, tags, version),
        _ => {
            return refuse(
                tls,
                "a cluster link must open with activate or hello".into(),
            )
            .await;
        }
    };
    let Some(cert) = cert else {
        return refuse(
            tls,
            "a worker link needs the worker's certificate; activate the worker first".into(),
        )
        .await;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ack = tx.clone();
    let accepted = match controller
        .link_up(&worker_id, &cert, boot_id, address, tags, version, tx)
        .await
    {
        Ok(a) => a,
        Err(message) => return refuse(tls, message).await,
    };
    let generation = accepted.generation;
    if send(&mut tls, &accepted.welcome).await.is_err() {
        return controller.link_down(&worker_id, generation);
    }
    let (mut r, mut w) = tokio::io::split(tls);
    let reader = async {
        loop {
            let m = match tokio::time::timeout(SILENCE_LIMIT, read_msg(&mut r, &mut buf)).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return format!("nothing heard for {SILENCE_LIMIT:?}"),
            };
            if !controller.link_seen(&worker_id, generation) {
                return "the worker was deleted or linked again".into();
            }
            match m {
                ToController::Events { batch, events } => {
                    // One durable commit for the batch; not acknowledged if it fails, so the
                    // worker sends the batch again.
                    if let Err(e) = controller.apply_events(events).await {
                        return format!("could not record events: {e}");
                    }
                    let _ = ack.send(ToWorker::Ack { batch });
                }
                ToController::Heartbeat => {}
                other => return format!("unexpected message {other:?}"),
            }
        }
    };
    let writer = async {
        while let Some(m) = rx.recv().await {
            if send(&mut w, &m).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        why = reader => debug!(worker_id, %why, "cluster link closed"),
        _ = writer => {}
    }
    controller.link_down(&worker_id, generation);
}
