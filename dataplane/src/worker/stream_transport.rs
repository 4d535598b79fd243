//! The worker side of the `tls` and `tcp` transports: TCP connections on the same port number
//! as the QUIC listener, one per proxied connection plus one control connection per session.
//!
//! The first byte tells them apart: a TLS record starts with 0x16, while a Sluice frame starts
//! with the high byte of its length, at most 0x10 (frames are at most 4 KiB).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use sluice_proto::frames::Frame;
use sluice_proto::{ConnectionClosedReason, Refusal, RefusalKind, TerminationReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::relay::pool::copy_pooled;
use crate::worker::registry::{unix_now, Admitted, LiveSession, Registry};
use crate::worker::{arm_expiry, WorkerConfig};

const TLS_HANDSHAKE: u8 = 0x16;
/// After a refusal, how long and how much the worker keeps reading what the client had
/// already sent, so its close does not turn into a reset that hides the refusal.
const REFUSAL_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const REFUSAL_DRAIN_BYTES: usize = 1 << 20;

/// Reads one frame, buffering whatever follows it in `buf`. Used for every transport: a QUIC
/// stream is an `AsyncRead` too.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> Result<Frame, Refusal> {
    loop {
        match Frame::decode(buf) {
            Ok(Some((frame, used))) => {
                buf.advance(used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Refusal::new(
                    RefusalKind::Protocol,
                    format!("bad frame: {e}"),
                ))
            }
        }
        buf.reserve(4096);
        match s.read_buf(buf).await {
            Ok(0) => {
                return Err(Refusal::new(
                    RefusalKind::Protocol,
                    "the connection closed before a complete frame arrived",
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(Refusal::new(RefusalKind::Protocol, format!("read: {e}"))),
        }
    }
}

/// Serves one accepted TCP connection.
pub(crate) async fn handle(
    registry: Arc<Registry>,
    config: Arc<WorkerConfig>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    slot: crate::worker::HandshakeSlot,
) {
    let _ = tcp.set_nodelay(true);
    if config.tcp_buffer.is_none() {
        crate::net::fit_send_buffer(&tcp);
    }
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let client_addr = tcp
        .peer_addr()
        .map_or_else(|_| "unknown".into(), |a| a.to_string());
    if first[0] == TLS_HANDSHAKE {
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
            Err(_) => return debug!("TLS handshake timed out"),
        };
        serve(
            registry,
            config,
            Conn::Tls(Box::new(tls)),
            client_addr,
            deadline,
            slot,
        )
        .await;
    } else if config.allow_plaintext {
        serve(
            registry,
            config,
            Conn::Plain(tcp),
            client_addr,
            deadline,
            slot,
        )
        .await;
    } else {
        let mut tcp = tcp;
        let refusal = Refusal::new(
            RefusalKind::Protocol,
            "this worker does not accept the plaintext tcp transport; use -transport tls or quic",
        );
        let _ = tcp.write_all(&Frame::Refused(refusal).to_vec()).await;
        let _ = tcp.shutdown().await;
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    async fn read_frame(&mut self, buf: &mut BytesMut) -> Result<Frame, Refusal> {
        match self {
            Conn::Plain(s) => read_frame(s, buf).await,
            Conn::Tls(s) => read_frame(s, buf).await,
        }
    }

    async fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        let bytes = frame.to_vec();
        match self {
            Conn::Plain(s) => s.write_all(&bytes).await,
            Conn::Tls(s) => {
                s.write_all(&bytes).await?;
                s.flush().await
            }
        }
    }

    async fn refuse(mut self, refusal: Refusal) {
        debug!(kind = ?refusal.kind, message = %refusal.message, "refused client");
        let _ = self.send(&Frame::Refused(refusal)).await;
        let _ = match &mut self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        };
        // Clients send application bytes right behind their hello. Closing with those unread
        // would answer with a reset that can destroy the refusal before the client reads it,
        // so read and discard until the client closes (bounded in time and bytes).
        let drain = async {
            let mut sink = [0u8; 4096];
            let mut left = REFUSAL_DRAIN_BYTES;
            while left > 0 {
                let r = match &mut self {
                    Conn::Plain(s) => s.read(&mut sink).await,
                    Conn::Tls(s) => s.read(&mut sink).await,
                };
                match r {
                    Ok(n) if n > 0 => left = left.saturating_sub(n),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, drain).await;
    }
}

async fn serve(
    registry: Arc<Registry>,
    config: Arc<WorkerConfig>,
    mut conn: Conn,
    client_addr: String,
    deadline: tokio::time::Instant,
    slot: crate::worker::HandshakeSlot,
) {
    let mut buf = BytesMut::new();
    let frame = match tokio::time::timeout_at(deadline, conn.read_frame(&mut buf)).await {
        Ok(Ok(f)) => f,
        Ok(Err(r)) => return conn.refuse(r).await,
        Err(_) => {
            return conn
                .refuse(Refusal::new(
                    RefusalKind::Protocol,
                    "timed out waiting for the client to present its token",
                ))
                .await
        }
    };
    let (nonce, token, control) = match frame {
        Frame::ClientHello { nonce, token } => (nonce, token, true),
        Frame::StreamHello { nonce, token } => (nonce, token, false),
        _ => {
            return conn
                .refuse(Refusal::new(
                    RefusalKind::Protocol,
                    "expected a client hello",
                ))
                .await
        }
    };
    let session = match registry.admit(&token, nonce, unix_now()) {
        Ok(Admitted::New(s)) => {
            arm_expiry(s.clone());
            s
        }
        Ok(Admitted::Existing(s)) => s,
        Err(r) => return conn.refuse(r).await,
    };
    drop(slot);
    if control {
        control_connection(session, conn).await;
    } else {
        data_connection(session, config, conn, buf, client_addr).await;
    }
}

/// Holds the session's control connection: tells the client when the session ends, and ends
/// the session when the client goes away.
async fn control_connection(session: Arc<LiveSession>, mut conn: Conn) {
    let accepted = Frame::HelloAccepted {
        connections_left: session.connections_left(),
        expires_at: session.claims.expires_at,
    };
    if conn.send(&accepted).await.is_err() {
        return session.end(TerminationReason::NetworkError);
    }
    info!(session = %session.claims.session_id, "client admitted (stream transport)");
    let mut sink = [0u8; 64];
    let client_gone = async {
        loop {
            let r = match &mut conn {
                Conn::Plain(s) => s.read(&mut sink).await,
                Conn::Tls(s) => s.read(&mut sink).await,
            };
            match r {
                Ok(0) => return TerminationReason::ClosedByEndUser,
                Ok(_) => {}
                Err(_) => return TerminationReason::NetworkError,
            }
        }
    };
    let ended = tokio::select! {
        reason = client_gone => {
            session.end(reason);
            None
        }
        reason = session.wait_end() => Some(reason),
    };
    if let Some(reason) = ended {
        let _ = conn.send(&Frame::SessionEnded(reason)).await;
        let _ = match &mut conn {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        };
    }
}

async fn data_connection(
    session: Arc<LiveSession>,
    config: Arc<WorkerConfig>,
    mut conn: Conn,
    early: BytesMut,
    client_addr: String,
) {
    let ticket = match session.open_connection() {
        Ok(t) => t,
        Err(r) => return conn.refuse(r).await,
    };
    let endpoint = session.claims.endpoint.clone();
    // A plaintext client's relay splices the target's bytes on (unless this thread runs the
    // uring driver), and a short receive queue keeps them recent (net::fit_buffers).
    let spliced = matches!(conn, Conn::Plain(_)) && !crate::uring::on_this_thread();
    let near_receive = spliced.then_some(crate::net::NEAR_SPLICED_RECEIVE_BUFFER);
    let dialed =
        match tokio::time::timeout(config.dial_timeout, session.dial(&early, near_receive)).await {
            Ok(dialed) => {
                dialed.map_err(|e| format!("the worker could not connect to {endpoint}: {e}"))
            }
            Err(_) => Err(format!("the worker timed out connecting to {endpoint}")),
        };
    let (target, endpoint_addr, sent) = match dialed {
        Ok(dialed) => dialed,
        Err(message) => {
            session.abandon_connection();
            return conn
                .refuse(Refusal::new(RefusalKind::TargetUnreachable, message))
                .await;
        }
    };
    let _ = target.set_nodelay(true);
    let accepted = Frame::StreamAccepted {
        connections_left: ticket.connections_left,
    };
    if conn.send(&accepted).await.is_err() {
        return session.close_connection(&ticket, 0, 0, ConnectionClosedReason::NetworkError);
    }
    session.emit_opened(&ticket, client_addr, endpoint_addr.to_string());
    let up = Arc::new(AtomicU64::new(sent as u64));
    let down = Arc::new(AtomicU64::new(0));
    let relay = async {
        let mut target = target;
        let early = &early[sent..];
        if !early.is_empty() {
            target.write_all(early).await?;
            up.fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        match conn {
            Conn::Plain(client) if crate::uring::on_this_thread() => {
                crate::uring::relay_here(client, target, up.clone(), down.clone()).await
            }
            Conn::Plain(client) => crate::relay::splice::relay(&client, &target, &up, &down).await,
            Conn::Tls(client) => copy_counted(*client, target, &up, &down).await,
        }
    };
    let reason = tokio::select! {
        r = relay => match r {
            Ok(()) => ConnectionClosedReason::ClosedByEndUser,
            Err(e) => match session.ended() {
                Some(t) => ConnectionClosedReason::from_termination(t),
                None => {
                    debug!(error = %e, "connection failed");
                    ConnectionClosedReason::NetworkError
                }
            },
        },
        r = session.wait_end() => ConnectionClosedReason::from_termination(r),
    };
    session.close_connection(
        &ticket,
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        reason,
    );
}

/// Copies both ways between a TLS stream and a TCP socket through pooled buffers, counting
/// bytes as they move (so a cancel mid-transfer still reports them).
pub(crate) async fn copy_counted<A, B>(
    a: A,
    b: B,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::try_join!(
        copy_pooled(&mut ar, &mut bw, a_to_b),
        copy_pooled(&mut br, &mut aw, b_to_a)
    )
    .map(|_| ())
}
