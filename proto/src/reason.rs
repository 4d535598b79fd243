//! Why sessions end, why connections close, and why a worker refuses a client.
//!
//! Each reason has one wire code (a QUIC application close code or a frame byte) and one
//! human string (Boundary's spelling), mapped here and nowhere else.

use serde::{Deserialize, Serialize};

/// Why a session reached `terminated` (Boundary's reasons and spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// No reason recorded.
    Unknown,
    /// The session reached its expiration time.
    TimedOut,
    /// The client ended the session (its `connect` exited).
    ClosedByEndUser,
    /// Terminated by an operator action other than cancel.
    Terminated,
    /// The client vanished (idle timeout, network failure).
    NetworkError,
    /// The worker or controller failed or shut down.
    SystemError,
    /// Every connection the session allows has been used and closed.
    ConnectionLimit,
    /// Canceled through the API.
    Canceled,
}

impl TerminationReason {
    /// All reasons, in wire-code order.
    pub const ALL: [Self; 8] = [
        Self::Unknown,
        Self::TimedOut,
        Self::ClosedByEndUser,
        Self::Terminated,
        Self::NetworkError,
        Self::SystemError,
        Self::ConnectionLimit,
        Self::Canceled,
    ];

    /// Boundary's spelling, as shown in `sessions read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::TimedOut => "timed out",
            Self::ClosedByEndUser => "closed by end-user",
            Self::Terminated => "terminated",
            Self::NetworkError => "network error",
            Self::SystemError => "system error",
            Self::ConnectionLimit => "connection limit",
            Self::Canceled => "canceled",
        }
    }

    /// Parses Boundary's spelling.
    pub fn from_str_opt(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The QUIC application close code a worker uses when it ends a session for this reason.
    /// Codes start at 0x100 so they never collide with the client's own close codes.
    pub fn close_code(self) -> u32 {
        0x100 + self.wire() as u32
    }

    /// Inverse of [`close_code`](Self::close_code).
    pub fn from_close_code(code: u64) -> Option<Self> {
        code.checked_sub(0x100)
            .and_then(|c| u8::try_from(c).ok())
            .and_then(Self::from_wire)
    }

    /// One-byte wire form.
    pub fn wire(self) -> u8 {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8
    }

    /// Inverse of [`wire`](Self::wire).
    pub fn from_wire(b: u8) -> Option<Self> {
        Self::ALL.get(usize::from(b)).copied()
    }

    /// What `sluice connect` prints as the termination reason (Boundary's wording).
    pub fn client_message(self) -> &'static str {
        match self {
            Self::TimedOut => "Session has expired",
            Self::ConnectionLimit => "No connections left in session",
            Self::Canceled => "Session was canceled",
            Self::ClosedByEndUser => "Session closed by end-user",
            Self::Terminated => "Session was terminated",
            Self::NetworkError => "Lost the connection to the worker",
            Self::SystemError => "The worker shut down or failed",
            Self::Unknown => "Session ended for an unknown reason",
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one proxied connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionClosedReason {
    /// No reason recorded.
    Unknown,
    /// The session expired while the connection was open.
    TimedOut,
    /// Either end closed the connection normally.
    ClosedByEndUser,
    /// The session was canceled.
    Canceled,
    /// A network failure on either leg.
    NetworkError,
    /// The worker failed or shut down.
    SystemError,
}

impl ConnectionClosedReason {
    /// Boundary's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::TimedOut => "timed out",
            Self::ClosedByEndUser => "closed by end-user",
            Self::Canceled => "canceled",
            Self::NetworkError => "network error",
            Self::SystemError => "system error",
        }
    }

    /// The connection-level reason for a connection cut short by its session ending.
    pub fn from_termination(r: TerminationReason) -> Self {
        match r {
            TerminationReason::TimedOut => Self::TimedOut,
            TerminationReason::Canceled | TerminationReason::Terminated => Self::Canceled,
            TerminationReason::ClosedByEndUser | TerminationReason::ConnectionLimit => {
                Self::ClosedByEndUser
            }
            TerminationReason::NetworkError => Self::NetworkError,
            TerminationReason::SystemError => Self::SystemError,
            TerminationReason::Unknown => Self::Unknown,
        }
    }
}

/// What kind of refusal a worker sent, grouped so a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The token failed to decode or its signature did not verify.
    InvalidToken,
    /// The token's session has expired.
    Expired,
    /// The token names another worker.
    WrongWorker,
    /// The session is already bound to another client.
    AlreadyBound,
    /// The session has used every connection it allows.
    ConnectionLimit,
    /// The session was canceled.
    Canceled,
    /// The session has already terminated.
    Terminated,
    /// The worker could not reach the target.
    TargetUnreachable,
    /// The client broke the protocol.
    Protocol,
    /// The worker failed or is shutting down.
    Internal,
}

impl RefusalKind {
    const ALL: [Self; 10] = [
        Self::InvalidToken,
        Self::Expired,
        Self::WrongWorker,
        Self::AlreadyBound,
        Self::ConnectionLimit,
        Self::Canceled,
        Self::Terminated,
        Self::TargetUnreachable,
        Self::Protocol,
        Self::Internal,
    ];

    /// One-byte wire form (never 0, which means "accepted").
    pub fn wire(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(9) as u8 + 1
    }

    /// Inverse of [`wire`](Self::wire).
    pub fn from_wire(b: u8) -> Option<Self> {
        b.checked_sub(1)
            .and_then(|i| Self::ALL.get(usize::from(i)))
            .copied()
    }
}

/// A worker's refusal: its kind and a message meant for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The kind, for programs.
    pub kind: RefusalKind,
    /// What happened and what to do, for people.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal, truncating the message to what a frame carries.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > crate::frames::MAX_MESSAGE {
            let mut end = crate::frames::MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { kind, message }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_codes_round_trip() {
        for r in TerminationReason::ALL {
            assert_eq!(
                TerminationReason::from_close_code(r.close_code().into()),
                Some(r)
            );
            assert_eq!(TerminationReason::from_str_opt(r.as_str()), Some(r));
        }
        assert_eq!(TerminationReason::from_close_code(0), None);
        assert_eq!(TerminationReason::from_close_code(0x1ff), None);
    }

    #[test]
    fn refusal_codes_round_trip() {
        for k in RefusalKind::ALL {
            assert_ne!(k.wire(), 0);
            assert_eq!(RefusalKind::from_wire(k.wire()), Some(k));
        }
        assert_eq!(RefusalKind::from_wire(0), None);
        assert_eq!(RefusalKind::from_wire(200), None);
    }
}
