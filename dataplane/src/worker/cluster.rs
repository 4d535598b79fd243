//! The worker's side of the cluster link (see `sluice_proto::cluster`).
//!
//! The link never sits on the connection path: tokens are verified with the keys the
//! controller last sent, so traffic keeps flowing while the controller is away. Events queue
//! in memory meanwhile and are sent again, in order, once the link is back; the controller
//! applies them idempotently and acknowledges each batch once it is durable.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice_proto::cluster::{decode, encode, ActivationToken, ToController, ToWorker, WorkerEvent};
use sluice_proto::KeySet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::worker::WorkerHandle;

/// Name in the controller's cluster certificate.
pub const CONTROLLER_SERVER_NAME: &str = "controller.sluice.internal";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept for the controller at most; older ones are dropped (with a warning) beyond it.
const MAX_PENDING_EVENTS: usize = 1_000_000;
/// Events per batch at most.
const MAX_BATCH: usize = 2_000;

/// Called with each key set the controller sends.
pub type KeysHook = Arc<dyn Fn(&[Vec<u8>]) + Send + Sync>;

/// What a worker needs to link to its controller.
#[derive(Clone)]
pub struct LinkConfig {
    /// Controller cluster addresses (`host:port`), tried in turn.
    pub upstreams: Vec<String>,
    /// The worker's id from activation.
    pub worker_id: String,
    /// DER of the worker's certificate.
    pub cert: Vec<u8>,
    /// DER of the cluster CA.
    pub ca_cert: Vec<u8>,
    /// PKCS#8 DER of the worker's key.
    pub key: Vec<u8>,
    /// Random per process.
    pub boot_id: u64,
    /// Where clients reach this worker.
    pub address: String,
    /// The worker's tags.
    pub tags: BTreeMap<String, Vec<String>>,
    /// Called with every key set the controller sends (the worker keeps the last one on disk,
    /// so a restart while the controller is away still admits tokens).
    pub on_keys: Option<KeysHook>,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("upstreams", &self.upstreams)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

async fn connect(
    upstreams: &[String],
    tls: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from(CONTROLLER_SERVER_NAME).map_err(|e| e.to_string())?;
    let mut last = String::from("no controller address is configured (initial_upstreams)");
    for up in upstreams {
        let attempt = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(up.as_str())
                .await
                .map_err(|e| format!("{up}: {e}"))?
                .collect();
            let mut err = format!("{up}: resolves to no address");
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        return connector
                            .connect(name.clone(), tcp)
                            .await
                            .map_err(|e| format!("{up}: TLS: {e}"));
                    }
                    Err(e) => err = format!("{up}: {e}"),
                }
            }
            Err(err)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{up}: timed out"),
        }
    }
    Err(last)
}

async fn read_msg<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Result<ToWorker, String> {
    loop {
        match decode::<ToWorker>(buf) {
            Ok(Some((m, used))) => {
                buf.advance(used);
                return Ok(m);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        buf.reserve(16 * 1024);
        match s.read_buf(buf).await {
            Ok(0) => return Err("the controller closed the link".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, m: &ToController) -> std::io::Result<()> {
    s.write_all(&encode(m)).await?;
    s.flush().await
}

/// Redeems an activation token at the first controller that answers. Returns the worker id,
/// its certificate and the cluster CA certificate. `public_key` is the raw public half of the
/// key the worker keeps.
pub async fn activate(
    upstreams: &[String],
    token_text: &str,
    public_key: Vec<u8>,
) -> Result<(String, Vec<u8>, Vec<u8>), String> {
    let token = ActivationToken::decode(token_text).map_err(|e| e.to_string())?;
    let tls =
        crate::tls::cluster_client_config(token.ca_fingerprint, None).map_err(|e| e.to_string())?;
    let mut s = connect(upstreams, tls).await?;
    let hello = ToController::Activate {
        activation_token: token_text.trim().to_owned(),
        public_key,
    };
    send(&mut s, &hello).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    match tokio::time::timeout(CONNECT_TIMEOUT, read_msg(&mut s, &mut buf)).await {
        Ok(Ok(ToWorker::Activated {
            worker_id,
            cert,
            ca_cert,
        })) => {
            if crate::tls::fingerprint(&CertificateDer::from(ca_cert.clone()))
                != token.ca_fingerprint
            {
                return Err("the controller sent a CA other than the one in the token".into());
            }
            Ok((worker_id, cert, ca_cert))
        }
        Ok(Ok(ToWorker::Refused { message })) => Err(message),
        Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the controller did not answer in time".into()),
    }
}

/// Keeps the worker linked to its controller for as long as the task runs: reconnects with
/// backoff, applies keys and cancels as they arrive, and delivers every event at least once.
pub async fn run_link(
    cfg: LinkConfig,
    worker: WorkerHandle,
    mut events: mpsc::UnboundedReceiver<WorkerEvent>,
) {
    let pin = crate::tls::fingerprint(&CertificateDer::from(cfg.ca_cert.clone()));
    let mut unacked: VecDeque<(u64, Vec<WorkerEvent>)> = VecDeque::new();
    let mut pending_events = 0usize;
    let mut next_batch = 1u64;
    let mut backoff = Duration::from_millis(100);
    let mut was_up = false;
    let mut last_error: Option<String> = None;
    loop {
        let tls = match PrivateKeyDer::try_from(cfg.key.clone())
            .map_err(|e| rustls::Error::General(e.into()))
            .and_then(|key| {
                crate::tls::cluster_client_config(
                    pin,
                    Some((
                        vec![
                            CertificateDer::from(cfg.cert.clone()),
                            CertificateDer::from(cfg.ca_cert.clone()),
                        ],
                        key,
                    )),
                )
            }) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "the worker's stored identity is unusable; activate it again");
                return;
            }
        };
        let outcome = async {
            let mut s = connect(&cfg.upstreams, tls).await?;
            let hello = ToController::Hello {
                worker_id: cfg.worker_id.clone(),
                boot_id: cfg.boot_id,
                address: cfg.address.clone(),
                tags: cfg.tags.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            };
            send(&mut s, &hello).await.map_err(|e| e.to_string())?;
            let mut buf = BytesMut::new();
            let heartbeat = match tokio::time::timeout(CONNECT_TIMEOUT, read_msg(&mut s, &mut buf))
                .await
                .map_err(|_| "the controller did not answer in time".to_string())??
            {
                ToWorker::Welcome {
                    keys,
                    cancels,
                    heartbeat_ms,
                } => {
                    apply_keys(&worker, &keys);
                    if let Some(f) = &cfg.on_keys {
                        f(&keys);
                    }
                    for (id, expires) in cancels {
                        worker.cancel_session(&id, expires);
                    }
                    Duration::from_millis(heartbeat_ms.clamp(200, 10_000))
                }
                ToWorker::Refused { message } => return Err(format!("refused: {message}")),
                other => return Err(format!("unexpected answer {other:?}")),
            };
            info!(worker_id = %cfg.worker_id, replaying = pending_events, "linked to the controller");
            was_up = true;
            last_error = None;
            backoff = Duration::from_millis(100);
            for (batch, evs) in &unacked {
                let m = ToController::Events {
                    batch: *batch,
                    events: evs.clone(),
                };
                send(&mut s, &m).await.map_err(|e| e.to_string())?;
            }
            let (mut r, mut w) = tokio::io::split(s);
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tokio::select! {
                    m = read_msg(&mut r, &mut buf) => match m? {
                        ToWorker::Keys { keys } => {
                            apply_keys(&worker, &keys);
                            if let Some(f) = &cfg.on_keys {
                                f(&keys);
                            }
                        }
                        ToWorker::Cancel { session_id, expires_at } => {
                            worker.cancel_session(&session_id, expires_at)
                        }
                        ToWorker::Ack { batch } => {
                            while unacked.front().is_some_and(|(b, _)| *b <= batch) {
                                if let Some((_, evs)) = unacked.pop_front() {
                                    pending_events -= evs.len();
                                }
                            }
                        }
                        ToWorker::Refused { message } => return Err(format!("refused: {message}")),
                        other => debug!(?other, "ignored message from the controller"),
                    },
                    ev = events.recv() => {
                        let Some(ev) = ev else { return Ok(()) };
                        let mut batch = vec![ev];
                        while batch.len() < MAX_BATCH {
                            match events.try_recv() {
                                Ok(e) => batch.push(e),
                                Err(_) => break,
                            }
                        }
                        pending_events += batch.len();
                        unacked.push_back((next_batch, batch.clone()));
                        let m = ToController::Events { batch: next_batch, events: batch };
                        next_batch += 1;
                        send(&mut w, &m).await.map_err(|e| e.to_string())?;
                    }
                    _ = tick.tick() => {
                        send(&mut w, &ToController::Heartbeat).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        .await;
        match outcome {
            Ok(()) => return, // the worker is shutting down
            Err(e) => {
                // Say it once per change of cause, not on every retry.
                if was_up || last_error.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, "cluster link down; traffic continues, retrying");
                } else {
                    debug!(error = %e, "cluster link still down");
                }
                was_up = false;
                last_error = Some(e);
            }
        }
        // While away, gather events into batches so nothing waits in the channel unbounded.
        let mut away_batch = None;
        let deadline = tokio::time::sleep(backoff);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                ev = events.recv() => {
                    let Some(ev) = ev else { return };
                    // Batches formed while away have not been sent yet (all unacknowledged
                    // batches go again on reconnect), so they can still grow.
                    match unacked.back_mut() {
                        Some((b, evs)) if Some(*b) == away_batch && evs.len() < MAX_BATCH => evs.push(ev),
                        _ => {
                            unacked.push_back((next_batch, vec![ev]));
                            away_batch = Some(next_batch);
                            next_batch += 1;
                        }
                    }
                    pending_events += 1;
                    while pending_events > MAX_PENDING_EVENTS {
                        if let Some((_, evs)) = unacked.pop_front() {
                            pending_events -= evs.len();
                            warn!(dropped = evs.len(), "too many events waiting for the controller; dropping the oldest");
                        }
                    }
                }
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn apply_keys(worker: &WorkerHandle, keys: &[Vec<u8>]) {
    worker.set_keys(key_set(keys));
}

/// A key set from the controller's list of Ed25519 public keys; unusable entries are skipped.
pub fn key_set(keys: &[Vec<u8>]) -> KeySet {
    let mut set = KeySet::default();
    for k in keys {
        match <[u8; 32]>::try_from(k.as_slice())
            .ok()
            .and_then(|b| sluice_proto::token::VerifyingKey::from_bytes(&b).ok())
        {
            Some(k) => set.insert(k),
            None => warn!("the controller sent an unusable token key; ignored"),
        }
    }
    set
}
