//! Messages on the cluster link between a worker and the controller.
//!
//! In `sluice dev` the link is in-process; the same values travel over the network link of
//! `sluice worker` (a later issue). Events carry the worker's clock so that a controller applying
//! a replayed batch records when things happened, not when it heard of them.

use serde::{Deserialize, Serialize};

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
