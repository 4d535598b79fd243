//! The worker: per-core threads, each with its own QUIC endpoint on a shared `SO_REUSEPORT` port.

pub mod cluster;
pub(crate) mod registry;
pub(crate) mod stream_transport;
pub(crate) mod trim;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_proto::cluster::WorkerEvent;
use sluice_proto::frames::Frame;
use sluice_proto::{ConnectionClosedReason, KeySet, Refusal, RefusalKind, TerminationReason};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::relay::{relay_after, Answer, Counts, OnConnection, Outcome};
use crate::worker::registry::{unix_now, Admitted, LiveSession, Registry};
use crate::{CLOSE_CLIENT_DONE, CLOSE_REFUSED_BASE};

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id; tokens must name it.
    pub worker_id: String,
    /// UDP address of the QUIC listener (port 0 picks one).
    pub listen_addr: SocketAddr,
    /// Runtime threads; 0 means one per core.
    pub threads: usize,
    /// The worker certificate followed by the cluster CA certificate.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The worker certificate's private key (DER).
    pub key_der: Vec<u8>,
    /// Time a client has to complete the QUIC handshake and present its token.
    pub handshake_timeout: Duration,
    /// Time allowed to connect to a target.
    pub dial_timeout: Duration,
    /// Accept the plaintext `tcp` transport (trusted networks and measurements only).
    pub allow_plaintext: bool,
    /// Handshakes (TLS or QUIC, then the token) in progress at once per thread; connections
    /// beyond it are refused at once.
    pub max_handshakes: usize,
    /// Fixed receive and send buffer size of the TCP sockets the worker relays (to clients of
    /// the tls and tcp transports, and to targets); `None` leaves the kernel's autotuning.
    pub tcp_buffer: Option<usize>,
    /// Bytes the relays may hold, together, read ahead of writes that have waited over a
    /// second (0: never read ahead). The limit is process-wide.
    pub read_ahead_budget: usize,
    /// How worker threads wait for I/O (`-io-driver`); `Uring` falls back to `Epoll` where
    /// io_uring is unavailable.
    pub io_driver: crate::IoDriver,
    /// How long a worker thread keeps polling for events, instead of sleeping, after a relay
    /// moved a small amount (interactive traffic); zero: sleep at once.
    pub busy_poll: Duration,
}

/// Counts the handshakes in progress on one thread.
#[derive(Clone)]
pub(crate) struct HandshakeSlots {
    busy: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One handshake in progress; dropping it frees the slot.
pub(crate) struct HandshakeSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl HandshakeSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            busy: Arc::default(),
            max: max.max(1),
        }
    }

    /// A slot, or `None` when `max` handshakes are already in progress.
    pub(crate) fn take(&self) -> Option<HandshakeSlot> {
        use std::sync::atomic::Ordering;
        if self.busy.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.busy.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(HandshakeSlot(self.busy.clone()))
    }
}

impl WorkerConfig {
    /// Defaults for a worker with this identity and listener.
    pub fn new(
        worker_id: String,
        listen_addr: SocketAddr,
        cert_chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
    ) -> Self {
        Self {
            worker_id,
            listen_addr,
            threads: 0,
            cert_chain,
            key_der,
            handshake_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(10),
            allow_plaintext: false,
            max_handshakes: 1024,
            tcp_buffer: None,
            read_ahead_budget: crate::relay::pool::DEFAULT_READ_AHEAD_BUDGET,
            io_driver: crate::IoDriver::Epoll,
            busy_poll: crate::spin::default_window(),
        }
    }
}

/// A running worker. Dropping it does not stop it; call [`Worker::shutdown`].
pub struct Worker {
    registry: Arc<Registry>,
    local_addr: SocketAddr,
    /// Held while the worker runs, so no other process joins its port.
    _port_claim: crate::net::PortClaim,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    trim_stop: Arc<std::sync::atomic::AtomicBool>,
    trimmer: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Binds the listener on every thread and starts serving. Events go to `events`.
    pub fn start(
        config: WorkerConfig,
        keys: KeySet,
        events: mpsc::UnboundedSender<WorkerEvent>,
    ) -> std::io::Result<Self> {
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let tls = crate::tls::rustls_server_config(
            config.cert_chain.clone(),
            PrivateKeyDer::try_from(config.key_der.clone())
                .map_err(|e| std::io::Error::other(format!("worker key: {e}")))?,
        )
        .map_err(|e| std::io::Error::other(format!("worker TLS config: {e}")))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.clone()));
        let server_config = crate::quic::server_config(tls)
            .map_err(|e| std::io::Error::other(format!("worker QUIC config: {e}")))?;
        let (local_addr, port_claim, sockets) =
            crate::net::bind_all(config.listen_addr, threads, config.tcp_buffer)?;
        crate::relay::pool::set_read_ahead_budget(config.read_ahead_budget);
        let mut registry = Registry::new(config.worker_id.clone(), keys, events);
        registry.tcp_buffer = config.tcp_buffer;
        let registry = Arc::new(registry);
        let (stop, _) = watch::channel(false);
        let config = Arc::new(config);
        let io_driver = crate::uring::effective(config.io_driver);
        // io_uring threads do not poll (uring::block_on).
        let busy_poll = if io_driver == crate::IoDriver::Epoll {
            config.busy_poll
        } else {
            Duration::ZERO
        };
        let mut handles = Vec::new();
        for (i, (socket, listener)) in sockets.into_iter().enumerate() {
            let registry = registry.clone();
            let acceptor = acceptor.clone();
            let server_config = server_config.clone();
            let stop = stop.subscribe();
            let config = config.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    crate::worker::registry::mark_worker_thread();
                    let span = info_span!("worker", thread = i);
                    crate::uring::block_on(
                        io_driver,
                        busy_poll,
                        serve(
                            registry,
                            config,
                            server_config,
                            acceptor,
                            socket,
                            listener,
                            stop,
                        )
                        .instrument(span),
                    );
                })?;
            handles.push(handle);
        }
        let trim_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trimmer = crate::worker::trim::spawn(registry.closed.clone(), trim_stop.clone())?;
        info!(
            addr = %local_addr,
            threads,
            %io_driver,
            busy_poll_us = busy_poll.as_micros() as u64,
            "worker listening"
        );
        if crate::spin::idle_cpus_halt_at_once() {
            info!(
                "idle CPUs here halt at once (cpuidle haltpoll, guest_halt_poll_ns 0), so \
                 traffic that wakes one waits for the host; with the kernel's default, 200000 \
                 in /sys/module/haltpoll/parameters/guest_halt_poll_ns, new connections \
                 through Sluice took half the time beyond their round trip (docs/tuning.md)"
            );
        }
        Ok(Self {
            registry,
            local_addr,
            _port_claim: port_claim,
            stop,
            threads: handles,
            trim_stop,
            trimmer,
        })
    }

    /// The UDP address clients reach the worker at.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A cheap handle for the cluster link: cancels and key updates.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            registry: self.registry.clone(),
        }
    }

    /// Ends every session with `system error`, tells clients, and stops the threads.
    pub fn shutdown(self) {
        self.registry.end_all(TerminationReason::SystemError);
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
        self.trim_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.trimmer.thread().unpark();
        let _ = self.trimmer.join();
    }
}

/// Cancels sessions and replaces keys on a running worker; cloneable and `Send`.
#[derive(Clone)]
pub struct WorkerHandle {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Ends a session now: its connections close and its token is refused from here on.
    pub fn cancel_session(&self, session_id: &str, expires_at: u64) {
        self.registry
            .end_session(session_id, TerminationReason::Canceled, expires_at);
    }

    /// Replaces the token-verification keys.
    pub fn set_keys(&self, keys: KeySet) {
        self.registry.set_keys(keys);
    }
}

async fn serve(
    registry: Arc<Registry>,
    config: Arc<WorkerConfig>,
    server_config: quinn::ServerConfig,
    acceptor: tokio_rustls::TlsAcceptor,
    socket: std::net::UdpSocket,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "could not start TCP listener");
            return;
        }
    };
    let endpoint = match crate::quic::udp::endpoint(socket, Some(server_config)) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "could not start QUIC endpoint");
            return;
        }
    };
    let slots = HandshakeSlots::new(config.max_handshakes);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some(slot) = slots.take() else {
                    debug!(remote = %incoming.remote_address(), "too many handshakes in progress; QUIC connection refused");
                    incoming.refuse();
                    continue;
                };
                let registry = registry.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    handle_connection(registry, config, incoming, slot)
                        .instrument(info_span!("client", %remote))
                        .await;
                });
            }
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else { continue };
                let Some(slot) = slots.take() else {
                    debug!(%remote, "too many handshakes in progress; TCP connection dropped");
                    continue;
                };
                let registry = registry.clone();
                let config = config.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(
                    crate::worker::stream_transport::handle(registry, config, acceptor, tcp, slot)
                        .instrument(info_span!("client", %remote, transport = "tcp")),
                );
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Let the close frames of ended sessions reach their clients, and the last events the
    // controller.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    registry.flush();
}

fn refuse(conn: &quinn::Connection, refusal: &Refusal) {
    debug!(kind = ?refusal.kind, message = %refusal.message, "refused client");
    crate::quic::congestion::close(
        conn,
        (CLOSE_REFUSED_BASE + u32::from(refusal.kind.wire())).into(),
        refusal.message.as_bytes(),
    );
}

async fn handle_connection(
    registry: Arc<Registry>,
    config: Arc<WorkerConfig>,
    incoming: quinn::Incoming,
    slot: HandshakeSlot,
) {
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    let hello = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| Refusal::new(RefusalKind::Protocol, format!("no control stream: {e}")))?;
        let mut buf = BytesMut::new();
        let frame = crate::worker::stream_transport::read_frame(&mut recv, &mut buf).await?;
        let Frame::ClientHello { nonce, token } = frame else {
            return Err(Refusal::new(
                RefusalKind::Protocol,
                "expected a client hello",
            ));
        };
        let admitted = registry.admit(&token, nonce, unix_now())?;
        Ok((admitted, send, recv))
    };
    let (admitted, control_send, _control_recv) =
        match tokio::time::timeout_at(deadline, hello).await {
            Ok(Ok(v)) => v,
            Ok(Err(refusal)) => return refuse(&conn, &refusal),
            Err(_) => {
                return refuse(
                    &conn,
                    &Refusal::new(
                        RefusalKind::Protocol,
                        "timed out waiting for the client to present its token",
                    ),
                )
            }
        };
    drop(slot);
    let session = match admitted {
        Admitted::New(s) => {
            arm_expiry(s.clone());
            s
        }
        Admitted::Existing(s) => s,
    };
    let span = info_span!("session", id = %session.claims.session_id);
    serve_session(session, config, conn, control_send)
        .instrument(span)
        .await;
}

pub(crate) fn arm_expiry(session: Arc<LiveSession>) {
    let secs_left = session.claims.expires_at.saturating_sub(unix_now());
    let at = tokio::time::Instant::now() + Duration::from_secs(secs_left);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => session.end(TerminationReason::TimedOut),
            _ = session.wait_end() => {}
        }
    });
}

/// One stream of a session counted as open until dropped.
struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Doubles a session's stream limit, up to [`crate::quic::MAX_STREAMS`], once more than half of
/// it is open, so a client opening many connections at once waits at most a round trip for the
/// next credit while a session with few pays for few (quinn allocates state for every stream
/// the limit allows). Returns the limit now in force.
fn raise_stream_limit(conn: &quinn::Connection, open: u32, limit: u32) -> u32 {
    if open <= limit / 2 || limit >= crate::quic::MAX_STREAMS {
        return limit;
    }
    let raised = (limit * 2).min(crate::quic::MAX_STREAMS);
    conn.set_max_concurrent_bi_streams(raised.into());
    debug!(open, limit = raised, "raised the session's stream limit");
    raised
}

async fn serve_session(
    session: Arc<LiveSession>,
    config: Arc<WorkerConfig>,
    conn: quinn::Connection,
    mut control: quinn::SendStream,
) {
    let accepted = Frame::HelloAccepted {
        connections_left: session.connections_left(),
        expires_at: session.claims.expires_at,
    };
    if control.write_all(&accepted.to_vec()).await.is_err() {
        session.end(TerminationReason::NetworkError);
        return;
    }
    info!("client admitted");
    let _probe = crate::diag::ConnProbe::new(&conn);
    let conn_id = conn.stable_id();
    let remote = conn.remote_address().to_string();
    // Streams open now (the control stream is one), and the limit the client was given.
    let open = Arc::new(AtomicU32::new(1));
    let mut limit = crate::quic::INITIAL_STREAMS;
    let gate = Arc::new(crate::relay::gate::SendGate::default());
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                    limit = raise_stream_limit(&conn, now_open, limit);
                    let session = session.clone();
                    let config = config.clone();
                    let remote = remote.clone();
                    let open = OpenStream(open.clone());
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        handle_stream(session, config, send, recv, remote, conn_id, &gate).await;
                        drop(open);
                    }.in_current_span());
                }
                Err(e) => {
                    let reason = match &e {
                        quinn::ConnectionError::ApplicationClosed(c)
                            if c.error_code == CLOSE_CLIENT_DONE.into() =>
                        {
                            TerminationReason::ClosedByEndUser
                        }
                        quinn::ConnectionError::LocallyClosed => {
                            session.ended().unwrap_or(TerminationReason::SystemError)
                        }
                        _ => TerminationReason::NetworkError,
                    };
                    info!(error = %e, reason = reason.as_str(), "client connection ended");
                    session.end(reason);
                    return;
                }
            },
            reason = session.wait_end() => {
                info!(reason = reason.as_str(), "session ended; closing client connection");
                crate::quic::congestion::close(
                    &conn,
                    reason.close_code().into(),
                    reason.as_str().as_bytes(),
                );
                return;
            }
        }
    }
}

async fn handle_stream(
    session: Arc<LiveSession>,
    config: Arc<WorkerConfig>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    client_addr: String,
    conn_id: usize,
    gate: &crate::relay::gate::SendGate,
) {
    let mut buf = BytesMut::new();
    // No time limit here: the stream belongs to a connection that already presented a valid
    // token, and under load its header can wait behind other streams' data for as long as
    // flow control holds it (1,000 concurrent bulk streams kept some waiting over 10 s, and a
    // limit here cut them). A client that vanishes is caught by the connection's idle timeout.
    match crate::worker::stream_transport::read_frame(&mut recv, &mut buf).await {
        Ok(Frame::StreamOpen) => {}
        other => {
            debug!(header = ?other, "stream did not open with a stream-open frame");
            let _ = recv.stop(0u32.into());
            let _ = send.reset(0u32.into());
            return;
        }
    }
    let ticket = match session.open_connection() {
        Ok(t) => t,
        Err(refusal) => {
            let _ = send.write_all(&Frame::Refused(refusal).to_vec()).await;
            let _ = send.finish();
            let _ = recv.stop(0u32.into());
            return;
        }
    };
    let endpoint = session.claims.endpoint.clone();
    let dialed = match tokio::time::timeout(config.dial_timeout, session.dial(&buf, None)).await {
        Ok(dialed) => {
            dialed.map_err(|e| format!("the worker could not connect to {endpoint}: {e}"))
        }
        Err(_) => Err(format!(
            "the worker timed out connecting to {endpoint} after {:?}",
            config.dial_timeout
        )),
    };
    let (tcp, endpoint_addr, sent) = match dialed {
        Ok(dialed) => dialed,
        Err(message) => return refuse_stream(&session, send, recv, message).await,
    };
    bytes::Buf::advance(&mut buf, sent);
    // The answer rides with the target's first bytes (relay::Answer::Send).
    let accepted = Frame::StreamAccepted {
        connections_left: ticket.connections_left,
    };
    session.emit_opened(&ticket, client_addr, endpoint_addr.to_string());
    let started = Instant::now();
    let counts = Arc::new(Counts::default());
    counts.got_from_quic(sent);
    counts.written_to_tcp(sent);
    let reason = tokio::select! {
        outcome = relay_after(
            tcp,
            send,
            recv,
            buf.freeze(),
            &counts,
            OnConnection { id: conn_id, gate },
            Answer::Send(accepted.to_vec().into()),
        ) => match outcome {
            Outcome::Done => ConnectionClosedReason::ClosedByEndUser,
            Outcome::Failed(e) => {
                match session.ended() {
                    Some(r) => ConnectionClosedReason::from_termination(r),
                    None => {
                        debug!(error = %e, "connection failed");
                        ConnectionClosedReason::NetworkError
                    }
                }
            }
        },
        r = session.wait_end() => ConnectionClosedReason::from_termination(r),
    };
    let up = counts
        .quic_to_tcp
        .load(std::sync::atomic::Ordering::Relaxed);
    let down = counts
        .tcp_to_quic
        .load(std::sync::atomic::Ordering::Relaxed);
    debug!(id = %ticket.id, up, down, elapsed = ?started.elapsed(), reason = reason.as_str(), "connection closed");
    session.close_connection(&ticket, up, down, reason);
}

async fn refuse_stream(
    session: &LiveSession,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    message: String,
) {
    warn!(%message, "target unreachable");
    let _ = send
        .write_all(&Frame::Refused(Refusal::new(RefusalKind::TargetUnreachable, message)).to_vec())
        .await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
    session.abandon_connection();
}

#[cfg(test)]
mod slot_tests {
    use super::HandshakeSlots;

    #[test]
    fn handshakes_beyond_the_limit_get_no_slot_until_one_ends() {
        let slots = HandshakeSlots::new(2);
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_none(), "a third handshake must wait");
        drop(a);
        assert!(
            slots.take().is_some(),
            "a finished handshake frees its slot"
        );
    }
}
