//! Sans-IO protocol code for Sluice.
//!
//! Everything here takes bytes and an explicit `now` (seconds since the Unix epoch) and returns
//! values: no sockets, no clock, no runtime. Every parser of untrusted bytes lives in this crate
//! so that it can be fuzzed (see `fuzz/`).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod codec;
pub mod frames;
pub mod reason;
pub mod token;

#[cfg(any(fuzzing, test))]
pub mod fuzzing;

pub use reason::{ConnectionClosedReason, Refusal, RefusalKind, TerminationReason};
pub use token::{AuthzToken, KeySet, SignedToken, TokenError, TokenSigner};

/// ALPN protocol identifier spoken between `sluice connect` and a worker.
pub const ALPN: &[u8] = b"sluice/1";
