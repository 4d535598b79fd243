//! The client side of the data path, used by `sluice connect`: one QUIC connection per session
//! to the worker named in the token, one stream per local TCP connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_proto::frames::{Frame, NONCE_LEN};
use sluice_proto::{AuthzToken, Refusal, RefusalKind, SignedToken, TerminationReason, TokenError};
use thiserror::Error;
use tokio::net::TcpStream;
use tracing::debug;

use crate::relay::{relay_after, Answer, Counts, OnConnection, Outcome};
use crate::{CLOSE_CLIENT_DONE, CLOSE_REFUSED_BASE};

/// How long the QUIC handshake and the token exchange may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a failed pipelined connection waits for the worker's answer (its refusal reason).
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// At most this much of the application's first bytes goes in the write that carries a data
/// connection's hello (one TLS record's worth).
const FIRST_BYTES: usize = 16 * 1024;
/// How long a `tls` connection made ahead of need ([`Spare`]) waits for an application
/// before it is closed. The worker gives a connection 10 s to present its token
/// (`WorkerConfig::handshake_timeout`) and holds one of its handshake slots meanwhile, so a
/// spare is let go well before that.
pub const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a session could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The token text could not be decoded.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The worker address in the token does not resolve.
    #[error("worker address {0:?} in the token is not a reachable address: {1}")]
    WorkerAddress(String, String),
    /// QUIC or TLS failed before the worker could answer.
    #[error("could not reach worker {addr}: {reason}")]
    Unreachable {
        /// Worker address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The worker refused the session.
    #[error("the worker refused the session: {0}")]
    Refused(Refusal),
    /// The session has already ended.
    #[error("session ended: {}", .0.client_message())]
    Ended(TerminationReason),
}

/// How `connect` reaches the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// One QUIC connection per session, a stream per proxied connection (the default).
    #[default]
    Quic,
    /// TLS 1.3 over TCP, one TCP connection per proxied connection: for networks that block UDP.
    Tls,
    /// Plaintext TCP (the worker must allow it): trusted networks and measurements.
    Tcp,
}

/// An open session with a worker.
pub struct ClientSession {
    inner: Inner,
    claims: AuthzToken,
    connections_left: AtomicI32,
}

enum Inner {
    Quic {
        conn: quinn::Connection,
        endpoint: quinn::Endpoint,
        // The control stream stays open for the life of the session.
        _control: (quinn::SendStream, quinn::RecvStream),
        _probe: crate::diag::ConnProbe,
        gate: crate::relay::gate::SendGate,
    },
    Stream {
        worker: SocketAddr,
        tls: Option<tokio_rustls::TlsConnector>,
        nonce: [u8; NONCE_LEN],
        token: Vec<u8>,
        ended: tokio::sync::watch::Receiver<Option<TerminationReason>>,
        close: tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        /// The next proxied connection's connection to the worker, made ahead of need.
        spare: std::sync::Mutex<Option<Spare>>,
    },
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("session_id", &self.claims.session_id)
            .finish_non_exhaustive()
    }
}

/// What happened to one proxied connection.
#[derive(Debug)]
pub enum StreamEnd {
    /// Relayed until both sides finished; byte counts up (to the target) and down.
    Done(u64, u64),
    /// The worker refused the connection.
    Refused(Refusal),
    /// The stream failed.
    Failed(String),
}

fn connection_error(addr: &str, e: quinn::ConnectionError) -> ConnectError {
    if let quinn::ConnectionError::ApplicationClosed(close) = &e {
        let code = close.error_code.into_inner();
        if let Some(reason) = TerminationReason::from_close_code(code) {
            return ConnectError::Ended(reason);
        }
        if let Some(kind) = code
            .checked_sub(CLOSE_REFUSED_BASE.into())
            .and_then(|k| u8::try_from(k).ok())
            .and_then(RefusalKind::from_wire)
        {
            return ConnectError::Refused(Refusal::new(
                kind,
                String::from_utf8_lossy(&close.reason).into_owned(),
            ));
        }
    }
    ConnectError::Unreachable {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

impl ClientSession {
    /// Decodes `token_text`, connects to its worker over `transport` (verifying the pinned CA
    /// unless plaintext) and presents it.
    pub async fn open(token_text: &str, transport: Transport) -> Result<Self, ConnectError> {
        let signed = SignedToken::decode(token_text)?;
        let claims = signed.unverified().clone();
        let addr = &claims.worker_addr;
        let worker: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| ConnectError::WorkerAddress(addr.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| ConnectError::WorkerAddress(addr.clone(), "no address".into()))?;
        if transport != Transport::Quic {
            return Self::open_stream(token_text, claims, worker, transport).await;
        }
        let bind: SocketAddr = if worker.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let unreachable = |reason: String| ConnectError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        let socket = crate::net::bind_udp(bind, false).map_err(|e| unreachable(e.to_string()))?;
        let mut endpoint =
            crate::quic::udp::endpoint(socket, None).map_err(|e| unreachable(e.to_string()))?;
        endpoint.set_default_client_config(
            crate::quic::client_config(claims.ca_fingerprint)
                .map_err(|e| unreachable(e.to_string()))?,
        );
        let connecting = endpoint
            .connect(worker, crate::tls::WORKER_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {HANDSHAKE_TIMEOUT:?}; is the worker running and is UDP to it allowed?"
                ))
            })?
            .map_err(|e| connection_error(addr, e))?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let token = token_bytes(token_text)?;
        let lost = |e: quinn::ConnectionError| connection_error(addr, e);
        let hello = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
            if let Err(e) = send
                .write_all(&Frame::ClientHello { nonce, token }.to_vec())
                .await
            {
                return Err(match e {
                    quinn::WriteError::ConnectionLost(e) => lost(e),
                    other => unreachable(other.to_string()),
                });
            }
            let mut buf = BytesMut::new();
            loop {
                match Frame::decode(&buf) {
                    Ok(Some((frame, _))) => return Ok((frame, send, recv)),
                    Ok(None) => {}
                    Err(e) => return Err(unreachable(format!("bad answer from worker: {e}"))),
                }
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                    Ok(None) | Err(_) => return Err(lost(conn.closed().await)),
                }
            }
        };
        let (frame, send, recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, hello)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "the worker did not answer the token within {HANDSHAKE_TIMEOUT:?}"
                ))
            })??;
        match frame {
            Frame::HelloAccepted {
                connections_left, ..
            } => Ok(Self {
                inner: Inner::Quic {
                    _probe: crate::diag::ConnProbe::new(&conn),
                    conn,
                    endpoint,
                    _control: (send, recv),
                    gate: Default::default(),
                },
                claims,
                connections_left: AtomicI32::new(connections_left),
            }),
            Frame::Refused(r) => Err(ConnectError::Refused(r)),
            other => Err(ConnectError::Unreachable {
                addr: addr.clone(),
                reason: format!("unexpected answer from worker: {other:?}"),
            }),
        }
    }

    /// The token's claims (as the controller issued them).
    pub fn claims(&self) -> &AuthzToken {
        &self.claims
    }

    /// Connections the session can still open; -1 when unlimited.
    pub fn connections_left(&self) -> i32 {
        self.connections_left.load(Ordering::Relaxed)
    }

    /// Proxies one local TCP connection over a new stream. `peer` is the application's
    /// address as `accept` gave it. `on_accepted` is called with the connections left once
    /// the worker admits it.
    pub async fn proxy(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        on_accepted: impl FnOnce(i32) + Send,
    ) -> StreamEnd {
        // Over `tcp` the application's bytes are spliced on, not read, and a short receive
        // queue keeps them recent (net::fit_buffers).
        let spliced = matches!(self.inner, Inner::Stream { tls: None, .. });
        crate::net::fit_buffers_to(
            &tcp,
            Some(peer),
            spliced.then_some(crate::net::NEAR_SPLICED_RECEIVE_BUFFER),
        );
        let (conn, gate) = match &self.inner {
            Inner::Quic { conn, gate, .. } => (conn, gate),
            Inner::Stream { .. } => return self.proxy_stream(tcp, on_accepted).await,
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return StreamEnd::Failed(e.to_string()),
        };
        // The header goes out now and application bytes follow without waiting for the answer,
        // so a new connection costs no extra round trip. It goes ahead of bulk streams' bytes
        // when the session's send credit is short (gate.rs).
        if let Err(e) = gate.write_all(&mut send, &Frame::StreamOpen.to_vec()).await {
            return StreamEnd::Failed(e.to_string());
        }
        let counts = Arc::new(Counts::default());
        let refused = std::sync::Mutex::new(None);
        let mut on_accepted = Some(on_accepted);
        let mut answer = |frame: Frame| match self.accept_answer(frame, |left| {
            if let Some(f) = on_accepted.take() {
                f(left);
            }
        }) {
            Ok(()) => Ok(()),
            Err(end) => {
                let msg = format!("{end:?}");
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
                Err(msg)
            }
        };
        let outcome = relay_after(
            tcp,
            send,
            recv,
            Bytes::new(),
            &counts,
            OnConnection {
                id: conn.stable_id(),
                gate,
            },
            Answer::Await(&mut answer),
        )
        .await;
        if let Some(end) = refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return end;
        }
        let up = counts.tcp_to_quic.load(Ordering::Relaxed);
        let down = counts.quic_to_tcp.load(Ordering::Relaxed);
        match outcome {
            Outcome::Done => StreamEnd::Done(up, down),
            // How far it got: the bytes quinn took from the client's socket and those written
            // to it.
            Outcome::Failed(e) => StreamEnd::Failed(format!("{e} ({up} bytes up, {down} down)")),
        }
    }

    fn accept_answer(&self, answer: Frame, on_accepted: impl FnOnce(i32)) -> Result<(), StreamEnd> {
        match answer {
            Frame::StreamAccepted { connections_left } => {
                self.connections_left
                    .store(connections_left, Ordering::Relaxed);
                on_accepted(connections_left);
                Ok(())
            }
            Frame::Refused(r) => {
                if r.kind == RefusalKind::ConnectionLimit {
                    self.connections_left.store(0, Ordering::Relaxed);
                }
                Err(StreamEnd::Refused(r))
            }
            other => Err(StreamEnd::Failed(format!(
                "unexpected answer from worker: {other:?}"
            ))),
        }
    }

    async fn open_stream(
        token_text: &str,
        claims: AuthzToken,
        worker: SocketAddr,
        transport: Transport,
    ) -> Result<Self, ConnectError> {
        let addr = claims.worker_addr.clone();
        let unreachable = |reason: String| ConnectError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        let tls = match transport {
            Transport::Tls => Some(tokio_rustls::TlsConnector::from(Arc::new(
                crate::tls::rustls_client_config(claims.ca_fingerprint)
                    .map_err(|e| unreachable(e.to_string()))?,
            ))),
            _ => None,
        };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let token = token_bytes(token_text)?;
        let hello = Frame::ClientHello {
            nonce,
            token: token.clone(),
        };
        let (mut conn, (answer, _)) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            dial_and_send(worker, tls.as_ref(), &hello),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let connections_left = match answer {
            Frame::HelloAccepted {
                connections_left, ..
            } => connections_left,
            Frame::Refused(r) => return Err(ConnectError::Refused(r)),
            other => {
                return Err(unreachable(format!(
                    "unexpected answer from worker: {other:?}"
                )))
            }
        };
        let (ended_tx, ended) = tokio::sync::watch::channel(None);
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let reason = tokio::select! {
                frame = conn.read_frame(&mut buf) => match frame {
                    Ok(Frame::SessionEnded(r)) => r,
                    _ => TerminationReason::NetworkError,
                },
                _ = close_rx => {
                    conn.shutdown().await;
                    TerminationReason::ClosedByEndUser
                }
            };
            let _ = ended_tx.send(Some(reason));
        });
        let session = Self {
            inner: Inner::Stream {
                worker,
                tls,
                nonce,
                token,
                ended,
                close: tokio::sync::Mutex::new(Some(close_tx)),
                spare: std::sync::Mutex::new(None),
            },
            claims,
            connections_left: AtomicI32::new(connections_left),
        };
        // The first application (`-exec`'s, often at once) finds its connection ready too.
        session.refill_spare();
        Ok(session)
    }

    /// Over `tls`, starts making the next proxied connection's connection to the worker,
    /// unless one is ready or on its way, or the session has no connection left.
    ///
    /// Not over `tcp`: its handshake is the kernel's alone, and a spare made no difference to
    /// a new connection there (docs/design.md).
    fn refill_spare(&self) {
        let Inner::Stream {
            worker,
            tls: Some(tls),
            spare,
            ..
        } = &self.inner
        else {
            return;
        };
        if self.connections_left() == 0 {
            return;
        }
        let mut slot = spare.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Spare::start(*worker, Some(tls.clone()), SPARE_IDLE));
        }
    }

    /// A connection to the worker with `hello` sent, and behind it what the application had
    /// sent by then (its length is the second value): the spare if it is still open, else a
    /// new connection.
    async fn worker_connection(
        &self,
        hello: &Frame,
        local: &TcpStream,
    ) -> std::io::Result<(StreamConn, usize)> {
        let Inner::Stream {
            worker, tls, spare, ..
        } = &self.inner
        else {
            return Err(std::io::Error::other("not a stream transport"));
        };
        let ready = spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ready) = ready {
            if let Some(mut conn) = ready.claim().await {
                // Nothing of the application's has gone yet if this fails: a new connection
                // takes the spare's place, unnoticed.
                match conn.send_hello(hello, local).await {
                    Ok(first) => return Ok((conn, first)),
                    Err(e) => debug!(error = %e, "the spare connection to the worker failed"),
                }
            }
        }
        let mut conn = dial(*worker, tls.as_ref()).await?;
        let first = conn.send_hello(hello, local).await?;
        Ok((conn, first))
    }

    async fn proxy_stream(&self, mut local: TcpStream, on_accepted: impl FnOnce(i32)) -> StreamEnd {
        let Inner::Stream { nonce, token, .. } = &self.inner else {
            return StreamEnd::Failed("not a stream transport".into());
        };
        let hello = Frame::StreamHello {
            nonce: *nonce,
            token: token.clone(),
        };
        let (conn, first) = match self.worker_connection(&hello, &local).await {
            Ok(v) => v,
            Err(e) => return StreamEnd::Failed(e.to_string()),
        };
        let _ = local.set_nodelay(true);
        // Application bytes follow the hello at once; the worker's answer is read first on the
        // way back. A new connection so costs no round trip beyond the transport's handshake.
        let up = AtomicU64::new(first as u64);
        let down = AtomicU64::new(0);
        let answer = std::sync::Mutex::new(None::<Result<(), StreamEnd>>);
        let take_answer = |frame: Result<Frame, Refusal>, on_accepted| {
            let verdict = match frame {
                Ok(f) => self.accept_answer(f, on_accepted),
                Err(r) => Err(StreamEnd::Failed(format!(
                    "the worker closed the connection before answering: {}",
                    r.message
                ))),
            };
            let ok = verdict.is_ok();
            *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
            if ok {
                // The next connection's, made while this one runs. The spawned dial starts
                // once this task yields, after the bytes that came with the answer are
                // written to the application.
                self.refill_spare();
                Ok(())
            } else {
                Err(std::io::Error::other("refused"))
            }
        };
        let answered = || answer.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        let (mut lr, mut lw) = local.split();
        let result = match conn {
            StreamConn::Plain(mut s) => {
                let (mut sr, sw) = s.split();
                let down_way = async {
                    let mut buf = BytesMut::new();
                    let frame =
                        crate::worker::stream_transport::read_frame(&mut sr, &mut buf).await;
                    take_answer(frame, on_accepted)?;
                    write_early(&mut lw, &buf, &down).await?;
                    crate::relay::splice::one_way(sr.as_ref(), lw.as_ref(), &down).await
                };
                let up_way = crate::relay::splice::one_way(lr.as_ref(), sw.as_ref(), &up);
                both_ways(up_way, down_way, answered).await
            }
            StreamConn::Tls(s) => {
                let (mut sr, mut sw) = tokio::io::split(*s);
                let down_way = async {
                    let mut buf = BytesMut::new();
                    let frame =
                        crate::worker::stream_transport::read_frame(&mut sr, &mut buf).await;
                    take_answer(frame, on_accepted)?;
                    write_early(&mut lw, &buf, &down).await?;
                    crate::relay::pool::copy_pooled(&mut sr, &mut lw, &down).await
                };
                let up_way = crate::relay::pool::copy_pooled(&mut lr, &mut sw, &up);
                both_ways(up_way, down_way, answered).await
            }
        };
        match answer.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Err(end)) => return end,
            None => {
                return StreamEnd::Failed(match result {
                    Err(e) => format!("the worker did not answer: {e}"),
                    Ok(()) => "the worker did not answer".into(),
                })
            }
            Some(Ok(())) => {}
        }
        match result {
            Ok(()) => StreamEnd::Done(up.into_inner(), down.into_inner()),
            Err(e) => StreamEnd::Failed(e.to_string()),
        }
    }

    /// Resolves when the worker ends the session, with its reason.
    pub async fn ended(&self) -> TerminationReason {
        let conn = match &self.inner {
            Inner::Quic { conn, .. } => conn,
            Inner::Stream { ended, .. } => {
                let mut rx = ended.clone();
                return match rx.wait_for(Option::is_some).await {
                    Ok(r) => r.unwrap_or(TerminationReason::Unknown),
                    Err(_) => TerminationReason::NetworkError,
                };
            }
        };
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                TerminationReason::from_close_code(c.error_code.into_inner())
                    .unwrap_or(TerminationReason::Unknown)
            }
            quinn::ConnectionError::LocallyClosed => TerminationReason::ClosedByEndUser,
            quinn::ConnectionError::TimedOut => TerminationReason::NetworkError,
            _ => TerminationReason::NetworkError,
        }
    }

    /// Ends the session from the client side and waits (briefly) for the worker to hear it.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Quic { conn, endpoint, .. } => {
                crate::quic::congestion::close(conn, CLOSE_CLIENT_DONE.into(), b"client done");
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle())
                        .await;
            }
            Inner::Stream { close, ended, .. } => {
                if let Some(tx) = close.lock().await.take() {
                    let _ = tx.send(());
                }
                let mut rx = ended.clone();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    rx.wait_for(Option::is_some),
                )
                .await;
            }
        }
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.claims.session_id
    }
}

/// A TCP (or TLS over TCP) connection to the worker, with bytes read past the last frame.
enum StreamConn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl StreamConn {
    async fn read_frame(&mut self, buf: &mut BytesMut) -> Result<Frame, Refusal> {
        match self {
            StreamConn::Plain(s) => crate::worker::stream_transport::read_frame(s, buf).await,
            StreamConn::Tls(s) => crate::worker::stream_transport::read_frame(s, buf).await,
        }
    }

    async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = match self {
            StreamConn::Plain(s) => s.shutdown().await,
            StreamConn::Tls(s) => s.shutdown().await,
        };
    }

    /// Writes `bytes` in one write (one TLS record up to 16 KiB) and flushes them.
    async fn write_flushed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            StreamConn::Plain(s) => s.write_all(bytes).await,
            StreamConn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Sends `hello` without waiting for the answer, and in the same write what `local` (the
    /// application) has sent so far, if anything; returns how many of its bytes went.
    ///
    /// One write, so the worker wakes once for both. Sent apart, the hello alone woke the
    /// worker's thread, which could take the CPU from `connect` before the application's bytes
    /// followed (seen with a connection made ahead of need, whose worker side sleeps until the
    /// hello comes).
    async fn send_hello(&mut self, hello: &Frame, local: &TcpStream) -> std::io::Result<usize> {
        let mut bytes = hello.to_vec();
        let start = bytes.len();
        bytes.resize(start + FIRST_BYTES, 0);
        // Nothing there yet, or an error: nothing goes now, and the relay reads it later.
        let first = local.try_read(&mut bytes[start..]).unwrap_or(0);
        bytes.truncate(start + first);
        self.write_flushed(&bytes).await?;
        Ok(first)
    }

    /// Resolves when the worker has sent something or closed: before a hello only a refusal
    /// (its time for the token ran out) or a close can come, and either way the connection is
    /// no longer usable. TLS records without application data (session tickets) are taken in
    /// without resolving.
    async fn spoiled(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut probe = [0u8; 1];
        let _ = match self {
            StreamConn::Plain(s) => s.read(&mut probe).await,
            StreamConn::Tls(s) => s.read(&mut probe).await,
        };
    }
}

/// Connects to the worker, with TLS when given.
async fn dial(
    worker: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> std::io::Result<StreamConn> {
    let tcp = TcpStream::connect(worker).await?;
    tcp.set_nodelay(true)?;
    crate::net::fit_send_buffer(&tcp);
    Ok(match tls {
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from(crate::tls::WORKER_SERVER_NAME)
                .map_err(std::io::Error::other)?;
            StreamConn::Tls(Box::new(connector.connect(name, tcp).await?))
        }
        None => StreamConn::Plain(tcp),
    })
}

/// Where a spare's connection is handed over: the claimer's end.
type Claim = tokio::sync::oneshot::Sender<StreamConn>;

/// A connection to the worker made ahead of need, its hello not yet sent, so the next proxied
/// connection skips the TCP and TLS handshakes on its way to the target (`tls` only; see
/// `ClientSession::refill_spare`).
///
/// A task makes it, then holds it until it is claimed, the worker closes it, `idle` passes or
/// the session is dropped (and this handle with it). The worker dials no target and counts no
/// connection until a hello comes, so an unused spare costs a socket on each end and one of
/// the worker's handshake slots, for at most `idle`.
struct Spare(tokio::sync::oneshot::Sender<Claim>);

impl Spare {
    fn start(
        worker: SocketAddr,
        tls: Option<tokio_rustls::TlsConnector>,
        idle: std::time::Duration,
    ) -> Self {
        let (claims_tx, claims) = tokio::sync::oneshot::channel::<Claim>();
        tokio::spawn(async move {
            let made = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial(worker, tls.as_ref())).await;
            let mut conn = match made {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return debug!(error = %e, "no spare connection to the worker"),
                Err(_) => return debug!("no spare connection to the worker: timed out"),
            };
            let claimed = tokio::select! {
                claim = claims => claim.ok(),
                () = conn.spoiled() => {
                    debug!("the worker closed the spare connection");
                    None
                }
                () = tokio::time::sleep(idle) => None,
            };
            if let Some(to) = claimed {
                let _ = to.send(conn);
            }
        });
        Self(claims_tx)
    }

    /// The connection, once made (this waits for a dial in progress), if it is still open.
    async fn claim(self) -> Option<StreamConn> {
        let (to, conn) = tokio::sync::oneshot::channel();
        self.0.send(to).ok()?;
        conn.await.ok()
    }
}

/// Connects, sends `hello` and reads the worker's answer (and any bytes after it).
async fn dial_and_send(
    worker: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    hello: &Frame,
) -> std::io::Result<(StreamConn, (Frame, BytesMut))> {
    let mut conn = dial(worker, tls).await?;
    conn.write_flushed(&hello.to_vec()).await?;
    let mut buf = BytesMut::new();
    let frame = conn
        .read_frame(&mut buf)
        .await
        .map_err(|r| std::io::Error::other(r.message))?;
    Ok((conn, (frame, buf)))
}

/// Writes bytes that arrived with the worker's answer to the local connection.
async fn write_early(
    local: &mut tokio::net::tcp::WriteHalf<'_>,
    early: &[u8],
    count: &AtomicU64,
) -> std::io::Result<()> {
    if !early.is_empty() {
        tokio::io::AsyncWriteExt::write_all(local, early).await?;
        count.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs both directions of a pipelined stream connection. When the way up fails before the
/// worker has answered (a refusal closes the connection under bytes already sent), the way
/// down gets a moment to read the answer, so the user sees the worker's reason.
async fn both_ways(
    up: impl std::future::Future<Output = std::io::Result<()>>,
    down: impl std::future::Future<Output = std::io::Result<()>>,
    answered: impl Fn() -> bool,
) -> std::io::Result<()> {
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    tokio::select! {
        d = &mut down => match d {
            Ok(()) => up.await,
            Err(e) => Err(e),
        },
        u = &mut up => match u {
            Ok(()) => down.await,
            Err(e) if !answered() => {
                match tokio::time::timeout(ANSWER_GRACE, &mut down).await {
                    Ok(Err(d)) => Err(d),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        },
    }
}

/// The binary form of a token's text.
fn token_bytes(text: &str) -> Result<Vec<u8>, TokenError> {
    sluice_proto::token::text_to_binary(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `connect`'s socket to a worker on this host gets the fixed send buffer
    /// (`net::fit_send_buffer`), however long its handshake took.
    #[tokio::test]
    async fn the_socket_to_a_worker_on_this_host_gets_the_near_send_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let StreamConn::Plain(tcp) = dial(addr, None).await.unwrap() else {
            panic!("no TLS connector was given, so the connection is plain");
        };
        let _ = listener.accept().await.unwrap();
        // The kernel doubles the figure it is given; autotuning would show 4 MiB here.
        assert_eq!(
            socket2::SockRef::from(&tcp).send_buffer_size().unwrap(),
            2 * crate::net::NEAR_SEND_BUFFER
        );
    }

    const LONG: Duration = Duration::from_secs(30);

    /// A listener standing in for the worker's TCP port, and a spare made to it (no TLS: the
    /// spare's keeping is the same), with the worker's end of it.
    async fn spare_to_listener(idle: Duration) -> (Spare, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spare = Spare::start(listener.local_addr().unwrap(), None, idle);
        let (worker_end, _) = tokio::time::timeout(LONG, listener.accept())
            .await
            .expect("the spare is dialed at once")
            .unwrap();
        (spare, worker_end)
    }

    #[tokio::test]
    async fn a_claimed_spare_is_the_connection_made_ahead() {
        let (spare, mut worker_end) = spare_to_listener(LONG).await;
        let Some(StreamConn::Plain(mut conn)) = spare.claim().await else {
            panic!("an open spare is handed over");
        };
        conn.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(LONG, worker_end.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
    }

    /// The hello and the application's first bytes leave in one write, and the bytes are
    /// counted; an application that has sent nothing yet adds nothing.
    #[tokio::test]
    async fn the_hello_carries_what_the_application_sent_so_far() {
        let (spare, mut worker_end) = spare_to_listener(LONG).await;
        let mut conn = spare.claim().await.expect("an open spare is handed over");
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(app_listener.local_addr().unwrap())
            .await
            .unwrap();
        let (local, _) = app_listener.accept().await.unwrap();
        let hello = Frame::StreamOpen.to_vec();
        // Nothing sent yet: the hello goes alone.
        assert_eq!(
            conn.send_hello(&Frame::StreamOpen, &local).await.unwrap(),
            0
        );
        app.write_all(b"first bytes").await.unwrap();
        tokio::time::timeout(LONG, local.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            conn.send_hello(&Frame::StreamOpen, &local).await.unwrap(),
            11
        );
        let mut expected = hello.clone();
        expected.extend_from_slice(&hello);
        expected.extend_from_slice(b"first bytes");
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(LONG, worker_end.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected);
    }

    /// A spare the worker closed (its time for a token ran out, or it restarted) is not handed
    /// over: the claimer dials a new connection instead of losing the application's bytes.
    #[tokio::test]
    async fn a_spare_the_worker_closed_is_not_handed_over() {
        let (spare, worker_end) = spare_to_listener(LONG).await;
        drop(worker_end);
        // The keeping task sees the close as soon as it runs; give it that turn.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(spare.claim().await.is_none());
    }

    /// A refusal the worker sent before any hello spoils the spare too.
    #[tokio::test]
    async fn a_spare_the_worker_refused_is_not_handed_over() {
        let (spare, mut worker_end) = spare_to_listener(LONG).await;
        let refusal = Frame::Refused(Refusal::new(RefusalKind::Protocol, "timed out"));
        worker_end.write_all(&refusal.to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(spare.claim().await.is_none());
    }

    /// An unclaimed spare is closed after its idle time, so it does not hold a worker's
    /// handshake slot until the worker gives up on it.
    #[tokio::test]
    async fn an_unclaimed_spare_is_closed_after_its_idle_time() {
        let (spare, mut worker_end) = spare_to_listener(Duration::from_millis(100)).await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(LONG, worker_end.read(&mut buf))
            .await
            .expect("the spare is closed within its idle time");
        assert_eq!(read.unwrap(), 0, "closed without a byte sent");
        assert!(spare.claim().await.is_none());
    }

    /// A spare that could not be made gives nothing, and the claimer dials.
    #[tokio::test]
    async fn a_spare_that_could_not_be_made_is_not_handed_over() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let spare = Spare::start(addr, None, LONG);
        assert!(tokio::time::timeout(LONG, spare.claim())
            .await
            .unwrap()
            .is_none());
    }
}
