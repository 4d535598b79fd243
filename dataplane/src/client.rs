//! The client side of the data path, used by `sluice connect`: one QUIC connection per session
//! to the worker named in the token, one stream per local TCP connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use sluice_proto::frames::{Frame, NONCE_LEN};
use sluice_proto::{AuthzToken, Refusal, RefusalKind, SignedToken, TerminationReason, TokenError};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::relay::{relay, Counts, Outcome};
use crate::{CLOSE_CLIENT_DONE, CLOSE_REFUSED_BASE};

/// How long the QUIC handshake and the token exchange may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// An open session with a worker.
pub struct ClientSession {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    claims: AuthzToken,
    connections_left: AtomicI32,
    // The control stream stays open for the life of the session.
    _control: (quinn::SendStream, quinn::RecvStream),
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
    /// Decodes `token_text`, connects to its worker (verifying the pinned CA) and presents it.
    pub async fn open(token_text: &str) -> Result<Self, ConnectError> {
        let signed = SignedToken::decode(token_text)?;
        let claims = signed.unverified().clone();
        let addr = &claims.worker_addr;
        let worker: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| ConnectError::WorkerAddress(addr.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| ConnectError::WorkerAddress(addr.clone(), "no address".into()))?;
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
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| unreachable(e.to_string()))?;
        endpoint.set_default_client_config(
            crate::tls::client_config(claims.ca_fingerprint)
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
        let token = bs58::decode_token(token_text)?;
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
                conn,
                endpoint,
                claims,
                connections_left: AtomicI32::new(connections_left),
                _control: (send, recv),
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

    /// Proxies one local TCP connection over a new stream. `on_accepted` is called with the
    /// connections left once the worker admits it.
    pub async fn proxy(&self, tcp: TcpStream, on_accepted: impl FnOnce(i32)) -> StreamEnd {
        let (mut send, mut recv) = match self.conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return StreamEnd::Failed(e.to_string()),
        };
        // The header goes out now and application bytes follow without waiting for the answer,
        // so a new connection costs no extra round trip.
        if let Err(e) = send.write_all(&Frame::StreamOpen.to_vec()).await {
            return StreamEnd::Failed(e.to_string());
        }
        let mut buf = BytesMut::new();
        let answer = loop {
            match Frame::decode(&buf) {
                Ok(Some((frame, used))) => {
                    buf.advance(used);
                    break frame;
                }
                Ok(None) => {}
                Err(e) => return StreamEnd::Failed(format!("bad answer from worker: {e}")),
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                Ok(None) => return StreamEnd::Failed("worker closed the stream".into()),
                Err(e) => return StreamEnd::Failed(e.to_string()),
            }
        };
        match answer {
            Frame::StreamAccepted { connections_left } => {
                self.connections_left
                    .store(connections_left, Ordering::Relaxed);
                on_accepted(connections_left);
            }
            Frame::Refused(r) => {
                if r.kind == RefusalKind::ConnectionLimit {
                    self.connections_left.store(0, Ordering::Relaxed);
                }
                return StreamEnd::Refused(r);
            }
            other => return StreamEnd::Failed(format!("unexpected answer from worker: {other:?}")),
        }
        let counts = Counts::default();
        let outcome = relay(tcp, send, recv, buf.freeze(), &counts).await;
        let up = counts.tcp_to_quic.load(Ordering::Relaxed);
        let down = counts.quic_to_tcp.load(Ordering::Relaxed);
        match outcome {
            Outcome::Done => StreamEnd::Done(up, down),
            Outcome::Failed(e) => StreamEnd::Failed(e),
        }
    }

    /// Resolves when the worker ends the session, with its reason.
    pub async fn ended(&self) -> TerminationReason {
        match self.conn.closed().await {
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
        self.conn.close(CLOSE_CLIENT_DONE.into(), b"client done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.claims.session_id
    }
}

mod bs58 {
    use sluice_proto::TokenError;

    pub fn decode_token(text: &str) -> Result<Vec<u8>, TokenError> {
        ::bs58::decode(text.trim())
            .into_vec()
            .map_err(|_| TokenError::NotBase58)
    }
}

/// Shared handle type for the CLI.
pub type SharedSession = Arc<ClientSession>;
