//! Messages on the cluster link between a worker and the controller.
//!
//! In `sluice dev` the link is in-process; `sluice worker` speaks the same values over TLS 1.3
//! to the controller's cluster port, as frames of `len u32 (big endian) | JSON`. Events carry
//! the worker's clock so that a controller applying a replayed batch records when things
//! happened, not when it heard of them.
//!
//! The link: the worker connects out. A new worker presents its one-time activation token in
//! [`ToController::Activate`] (the TLS server is checked against the CA fingerprint inside that
//! token) and gets its id and certificate. From then on it connects with that certificate as its
//! TLS client certificate and opens with [`ToController::Hello`]; the controller answers
//! [`ToWorker::Welcome`] with the token-verification keys and every cancel the worker must apply,
//! then pushes [`ToWorker::Keys`] and [`ToWorker::Cancel`] the moment they happen. The worker
//! sends [`ToController::Events`] in numbered batches, keeps each until
//! [`ToWorker::Ack`] says it is durable, and sends the unacknowledged ones again after a
//! reconnect (events are idempotent).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::reason::{ConnectionClosedReason, TerminationReason};

/// What a worker tells the controller. Every event is idempotent: applying one twice changes
/// nothing the second time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// The first client reached the worker with this session's token.
    SessionActivated {
        /// Session id.
        session_id: String,
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// A proxied connection was admitted and its target dialed.
    ConnectionOpened {
        /// Session id.
        session_id: String,
        /// Worker-assigned connection id, unique within the session.
        connection_id: String,
        /// The client's address as the worker saw it.
        client_addr: String,
        /// The target address dialed.
        endpoint_addr: String,
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// A proxied connection closed.
    ConnectionClosed {
        /// Session id.
        session_id: String,
        /// Connection id from [`WorkerEvent::ConnectionOpened`].
        connection_id: String,
        /// Bytes from the client to the target.
        bytes_up: u64,
        /// Bytes from the target to the client.
        bytes_down: u64,
        /// Why it closed.
        reason: ConnectionClosedReason,
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The worker has closed every connection of the session and will admit no more.
    SessionClosed {
        /// Session id.
        session_id: String,
        /// Why.
        reason: TerminationReason,
        /// Unix milliseconds.
        at_ms: u64,
    },
}

impl WorkerEvent {
    /// The session the event concerns.
    pub fn session_id(&self) -> &str {
        match self {
            Self::SessionActivated { session_id, .. }
            | Self::ConnectionOpened { session_id, .. }
            | Self::ConnectionClosed { session_id, .. }
            | Self::SessionClosed { session_id, .. } => session_id,
        }
    }
}

/// ALPN of the cluster link.
pub const CLUSTER_ALPN: &[u8] = b"sluice-cluster/1";

/// Longest cluster-link frame (payload) either side accepts.
pub const MAX_LINK_FRAME: usize = 4 << 20;

/// Worker → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToController {
    /// First contact of a new worker: redeem the activation token for an identity.
    Activate {
        /// The token `sluice workers create controller-led` printed.
        activation_token: String,
        /// The worker's public key (raw, uncompressed P-256 point); its private key never
        /// leaves the worker.
        public_key: Vec<u8>,
    },
    /// Opens a link of an activated worker (after TLS with its certificate).
    Hello {
        /// The worker id from activation.
        worker_id: String,
        /// Random per worker process: a new value tells the controller the worker restarted
        /// and the sessions of its previous run are gone.
        boot_id: u64,
        /// Where clients reach the worker (`host:port`).
        address: String,
        /// The worker's tags, by key.
        tags: std::collections::BTreeMap<String, Vec<String>>,
        /// Release of the worker.
        version: String,
    },
    /// A numbered batch of events.
    Events {
        /// Increases by one per batch within a boot.
        batch: u64,
        /// The events, in the order they happened.
        events: Vec<WorkerEvent>,
    },
    /// Nothing to say, but still here.
    Heartbeat,
}

/// Controller → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// Activation succeeded: the worker's id and its certificate, signed by the cluster CA.
    Activated {
        /// Worker id (`w_…`).
        worker_id: String,
        /// DER of the worker certificate.
        cert: Vec<u8>,
        /// DER of the cluster CA certificate.
        ca_cert: Vec<u8>,
    },
    /// The link is up: the keys to verify tokens with and the sessions to end.
    Welcome {
        /// Ed25519 public keys (32 bytes each) whose tokens are valid.
        keys: Vec<Vec<u8>>,
        /// Sessions to end now, each with its token's expiry (unix seconds).
        cancels: Vec<(String, u64)>,
        /// How often the worker sends a heartbeat when idle, in milliseconds.
        heartbeat_ms: u64,
    },
    /// The token-verification keys changed (rotation): replaces the set.
    Keys {
        /// Ed25519 public keys (32 bytes each).
        keys: Vec<Vec<u8>>,
    },
    /// End a session now.
    Cancel {
        /// Session id.
        session_id: String,
        /// Its token's expiry (unix seconds), until which the worker refuses it.
        expires_at: u64,
    },
    /// The events of `batch` are stored durably.
    Ack {
        /// Batch number from [`ToController::Events`].
        batch: u64,
    },
    /// The link is refused, with what to do about it.
    Refused {
        /// For the operator.
        message: String,
    },
}

/// A cluster-link frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    /// Longer than [`MAX_LINK_FRAME`].
    #[error("cluster link frame of {0} bytes is larger than the {MAX_LINK_FRAME}-byte limit")]
    TooLong(usize),
    /// Not a message of this protocol.
    #[error("cluster link frame is not a valid message: {0}")]
    Malformed(String),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes the frame at the start of `buf`: `Ok(None)` until it is complete, then the message
/// and the bytes it used. The length is checked before anything is buffered for it.
pub fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<Option<(T, usize)>, LinkError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_LINK_FRAME {
        return Err(LinkError::TooLong(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    serde_json::from_slice(body)
        .map(|m| Some((m, 4 + len)))
        .map_err(|e| LinkError::Malformed(e.to_string()))
}

/// Prefix of an activation token's text (as Boundary's controller-led tokens).
pub const ACTIVATION_PREFIX: &str = "neslat_";

/// The one-time token a new worker redeems for its identity. It names the worker, carries the
/// secret (stored hashed by the controller) and pins the cluster CA, so the worker can check
/// the controller before it sends the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ActivationToken {
    /// The worker record the token belongs to.
    pub worker_id: String,
    /// 32 random bytes.
    pub secret: [u8; 32],
    /// SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: [u8; 32],
}

impl std::fmt::Debug for ActivationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationToken")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl ActivationToken {
    /// The text form.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(1 + self.worker_id.len() + 64);
        b.push(self.worker_id.len().min(255) as u8);
        b.extend_from_slice(&self.worker_id.as_bytes()[..self.worker_id.len().min(255)]);
        b.extend_from_slice(&self.secret);
        b.extend_from_slice(&self.ca_fingerprint);
        format!("{ACTIVATION_PREFIX}{}", bs58::encode(b).into_string())
    }

    /// Parses the text form.
    pub fn decode(text: &str) -> Result<Self, LinkError> {
        let bad = |why: &str| LinkError::Malformed(format!("activation token: {why}"));
        let body = text
            .trim()
            .strip_prefix(ACTIVATION_PREFIX)
            .ok_or_else(|| bad("it does not start with neslat_"))?;
        if body.len() > 512 {
            return Err(bad("it is too long"));
        }
        let b = bs58::decode(body)
            .into_vec()
            .map_err(|_| bad("it is not base58"))?;
        let (&n, rest) = b.split_first().ok_or_else(|| bad("it is empty"))?;
        let n = n as usize;
        if rest.len() != n + 64 {
            return Err(bad("it has the wrong length"));
        }
        let worker_id = std::str::from_utf8(&rest[..n])
            .map_err(|_| bad("the worker id is not text"))?
            .to_owned();
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&rest[n..n + 32]);
        let mut ca_fingerprint = [0u8; 32];
        ca_fingerprint.copy_from_slice(&rest[n + 32..]);
        Ok(Self {
            worker_id,
            secret,
            ca_fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn activation_tokens_round_trip_and_garbage_is_refused() {
        let t = ActivationToken {
            worker_id: "w_AbCdEf1234".into(),
            secret: [9; 32],
            ca_fingerprint: [3; 32],
        };
        let text = t.encode();
        assert!(text.starts_with("neslat_"));
        assert_eq!(ActivationToken::decode(&text).unwrap(), t);
        assert!(
            !format!("{t:?}").contains("9, 9"),
            "Debug must not show the secret"
        );
        for bad in [
            "",
            "neslat_",
            "at_123",
            "neslat_0OIl",
            &text[..text.len() - 3],
        ] {
            assert!(ActivationToken::decode(bad).is_err(), "{bad:?}");
        }
    }
    use super::*;

    #[test]
    fn messages_round_trip_and_partial_frames_wait() {
        let msg = ToController::Events {
            batch: 7,
            events: vec![WorkerEvent::SessionClosed {
                session_id: "s_1".into(),
                reason: TerminationReason::Canceled,
                at_ms: 5,
            }],
        };
        let bytes = encode(&msg);
        for cut in 0..bytes.len() {
            assert_eq!(decode::<ToController>(&bytes[..cut]).unwrap(), None);
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&encode(&ToController::Heartbeat));
        let (first, used) = decode::<ToController>(&two).unwrap().unwrap();
        assert_eq!(first, msg);
        assert_eq!(used, bytes.len());
        let (second, _) = decode::<ToController>(&two[used..]).unwrap().unwrap();
        assert_eq!(second, ToController::Heartbeat);
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let huge = ((MAX_LINK_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            decode::<ToWorker>(&huge),
            Err(LinkError::TooLong(MAX_LINK_FRAME + 1))
        );
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{nope");
        assert!(matches!(
            decode::<ToWorker>(&junk),
            Err(LinkError::Malformed(_))
        ));
        let unknown = encode(&serde_json::json!({"type": "ack", "batch": 1, "extra": true}));
        assert!(matches!(
            decode::<ToWorker>(&unknown),
            Err(LinkError::Malformed(_))
        ));
    }
}
