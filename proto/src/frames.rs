//! Frames spoken between `sluice connect` and a worker.
//!
//! On each QUIC connection (or TLS/TCP connection, later) the client first sends
//! [`Frame::ClientHello`] with its token on a control stream and the worker answers
//! [`Frame::HelloAccepted`] or [`Frame::Refused`]. Each proxied TCP connection is then one stream
//! that starts with [`Frame::StreamOpen`]; the client may send application bytes right behind it
//! without waiting, and the worker answers [`Frame::StreamAccepted`] or [`Frame::Refused`] before
//! any bytes from the target. A refusal goes at once; over QUIC an acceptance goes with the
//! target's first bytes, in the same packet, or alone once the target has ended, so a client
//! must not wait for it before relaying. After those headers a stream carries raw bytes only,
//! unframed.
//!
//! Encoding: `len u16 | type u8 | payload`, where `len` counts type and payload.

use crate::codec::{put_vec16, DecodeError, Reader};
use crate::reason::{Refusal, RefusalKind};
use crate::token::MAX_BINARY;

/// Longest frame (type and payload) a peer may send.
pub const MAX_FRAME: usize = 4096;
/// Longest refusal message.
pub const MAX_MESSAGE: usize = 1024;
/// Size of the client's binding nonce.
pub const NONCE_LEN: usize = 16;

const T_CLIENT_HELLO: u8 = 1;
const T_HELLO_ACCEPTED: u8 = 2;
const T_STREAM_OPEN: u8 = 3;
const T_STREAM_ACCEPTED: u8 = 4;
const T_REFUSED: u8 = 5;
const T_STREAM_HELLO: u8 = 6;
const T_SESSION_ENDED: u8 = 7;

/// One control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → worker: present the token, bound to this client by a random nonce.
    ClientHello {
        /// Random per `connect` process; the first nonce seen binds the session.
        nonce: [u8; NONCE_LEN],
        /// The token in its binary form.
        token: Vec<u8>,
    },
    /// Worker → client: the session is admitted.
    HelloAccepted {
        /// Connections the session can still open; -1 when unlimited.
        connections_left: i32,
        /// Seconds since the Unix epoch when the session expires.
        expires_at: u64,
    },
    /// Client → worker: this stream is a new proxied connection.
    StreamOpen,
    /// Worker → client: the connection is counted and the target dialed.
    StreamAccepted {
        /// Connections the session can still open after this one; -1 when unlimited.
        connections_left: i32,
    },
    /// Worker → client: refused, with a reason for the user.
    Refused(Refusal),
    /// Client → worker on the TCP and TLS transports: present the token and open a proxied
    /// connection on this same TCP connection (one TCP connection per proxied connection).
    StreamHello {
        /// The nonce of the `connect` process, as in its [`Frame::ClientHello`].
        nonce: [u8; NONCE_LEN],
        /// The token in its binary form.
        token: Vec<u8>,
    },
    /// Worker → client on the control connection of the TCP and TLS transports: the session
    /// has ended (QUIC carries this as the connection's close code instead).
    SessionEnded(crate::TerminationReason),
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        match self {
            Self::ClientHello { nonce, token } => {
                out.push(T_CLIENT_HELLO);
                out.extend_from_slice(nonce);
                put_vec16(out, token);
            }
            Self::HelloAccepted {
                connections_left,
                expires_at,
            } => {
                out.push(T_HELLO_ACCEPTED);
                out.extend_from_slice(&connections_left.to_be_bytes());
                out.extend_from_slice(&expires_at.to_be_bytes());
            }
            Self::StreamOpen => out.push(T_STREAM_OPEN),
            Self::StreamAccepted { connections_left } => {
                out.push(T_STREAM_ACCEPTED);
                out.extend_from_slice(&connections_left.to_be_bytes());
            }
            Self::Refused(r) => {
                out.push(T_REFUSED);
                out.push(r.kind.wire());
                put_vec16(out, r.message.as_bytes());
            }
            Self::StreamHello { nonce, token } => {
                out.push(T_STREAM_HELLO);
                out.extend_from_slice(nonce);
                put_vec16(out, token);
            }
            Self::SessionEnded(reason) => {
                out.push(T_SESSION_ENDED);
                out.push(reason.wire());
            }
        }
        let len = u16::try_from(out.len() - start - 2).expect("frame within u16");
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one frame from the front of `buf`. Returns `Ok(None)` when more bytes are
    /// needed, or the frame and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        if len > MAX_FRAME {
            return Err(DecodeError::TooLong {
                field: "frame",
                len,
                max: MAX_FRAME,
            });
        }
        let Some(body) = buf.get(2..2 + len) else {
            return Ok(None);
        };
        let mut r = Reader::new(body);
        let frame = match r.u8("frame type")? {
            T_CLIENT_HELLO => Self::ClientHello {
                nonce: r.array("nonce")?,
                token: r.vec16(MAX_BINARY, "token")?.to_vec(),
            },
            T_HELLO_ACCEPTED => Self::HelloAccepted {
                connections_left: r.i32("connections left")?,
                expires_at: r.u64("expires at")?,
            },
            T_STREAM_OPEN => Self::StreamOpen,
            T_STREAM_ACCEPTED => Self::StreamAccepted {
                connections_left: r.i32("connections left")?,
            },
            T_REFUSED => {
                let code = r.u8("refusal kind")?;
                let kind = RefusalKind::from_wire(code).ok_or(DecodeError::Unknown {
                    field: "refusal kind",
                    value: code.into(),
                })?;
                let msg = r.vec16(MAX_MESSAGE, "message")?;
                let message =
                    String::from_utf8(msg.to_vec()).map_err(|_| DecodeError::NotUtf8("message"))?;
                Self::Refused(Refusal { kind, message })
            }
            T_STREAM_HELLO => Self::StreamHello {
                nonce: r.array("nonce")?,
                token: r.vec16(MAX_BINARY, "token")?.to_vec(),
            },
            T_SESSION_ENDED => {
                let code = r.u8("termination reason")?;
                Self::SessionEnded(crate::TerminationReason::from_wire(code).ok_or(
                    DecodeError::Unknown {
                        field: "termination reason",
                        value: code.into(),
                    },
                )?)
            }
            other => {
                return Err(DecodeError::Unknown {
                    field: "frame type",
                    value: other.into(),
                })
            }
        };
        r.finish()?;
        Ok(Some((frame, 2 + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::ClientHello {
                nonce: [3; NONCE_LEN],
                token: vec![1, 2, 3, 4],
            },
            Frame::HelloAccepted {
                connections_left: -1,
                expires_at: 1_700_000_000,
            },
            Frame::StreamOpen,
            Frame::StreamAccepted {
                connections_left: 0,
            },
            Frame::Refused(Refusal::new(
                RefusalKind::ConnectionLimit,
                "no connections left",
            )),
        ]
    }

    #[test]
    fn frames_round_trip_and_report_their_length() {
        for f in samples() {
            let mut bytes = f.to_vec();
            bytes.extend_from_slice(b"app data");
            let (g, used) = Frame::decode(&bytes).unwrap().unwrap();
            assert_eq!(g, f);
            assert_eq!(&bytes[used..], b"app data");
        }
    }

    #[test]
    fn partial_frames_ask_for_more_and_bad_ones_are_errors() {
        for f in samples() {
            let bytes = f.to_vec();
            for n in 0..bytes.len() {
                assert_eq!(Frame::decode(&bytes[..n]), Ok(None), "{f:?} at {n}");
            }
        }
        assert!(Frame::decode(&[0, 1, 99]).is_err());
        assert!(Frame::decode(&[0xff, 0xff]).is_err());
        // A declared length with trailing bytes inside it.
        assert!(Frame::decode(&[0, 2, T_STREAM_OPEN, 0]).is_err());
        // An unknown refusal kind, and an unknown termination reason.
        assert!(Frame::decode(&[0, 4, T_REFUSED, 0, 0, 0]).is_err());
        assert!(Frame::decode(&[0, 2, T_SESSION_ENDED, 200]).is_err());
    }

    #[test]
    fn refusal_messages_are_bounded() {
        let r = Refusal::new(RefusalKind::Internal, "é".repeat(MAX_MESSAGE));
        assert!(r.message.len() <= MAX_MESSAGE);
        let f = Frame::Refused(r);
        assert_eq!(Frame::decode(&f.to_vec()).unwrap().unwrap().0, f);
    }
}
