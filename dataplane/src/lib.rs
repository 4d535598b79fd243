//! The Sluice worker and the client side of its data path.
//!
//! A worker runs one single-threaded runtime per core. Each owns a QUIC endpoint on its own
//! `SO_REUSEPORT` UDP socket, so the kernel spreads clients over cores by 4-tuple and a QUIC
//! connection, its streams and their target sockets stay on one thread for their whole life.
//! The only state shared between threads is the session registry (one lock, taken when a
//! session or a connection is admitted or ends, never on the byte path).
//!
//! Tokens are verified locally against the controller's public keys; what happens is reported
//! to the controller as [`WorkerEvent`](sluice_proto::cluster::WorkerEvent)s on a channel.
//!
//! Rooms: `worker/` (threads, admission, the `tls`/`tcp` transports, the cluster link,
//! memory trimming), `client/` (`sluice connect`'s side), `relay/` (moving bytes: QUIC↔TCP,
//! splice, the TLS copy pool, send priority), `quic/` (UDP endpoints, congestion control,
//! transport settings), `tls.rs`, `uring.rs` (the optional io_uring driver), `spin.rs` (busy
//! polling), `net.rs` (socket setup), `diag.rs` (SIGUSR1 reports). Every `unsafe` block is in
//! `sys.rs`: `malloc_trim` and reading `TCP_INFO`.
#![deny(unsafe_code)]

pub mod client;
pub mod diag;
pub mod net;
pub(crate) mod quic;
pub(crate) mod relay;
pub(crate) mod spin;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub(crate) mod uring;
pub(crate) mod worker;

pub use relay::pool::DEFAULT_READ_AHEAD_BUDGET;
pub use spin::default_window as default_busy_poll;
pub use spin::with_polling as with_busy_polling;
pub use uring::IoDriver;
pub use worker::cluster;
pub use worker::registry::unix_now;
pub use worker::{Worker, WorkerConfig, WorkerHandle};

/// QUIC application close code a client sends when its user ends the session.
pub const CLOSE_CLIENT_DONE: u32 = 0x01;
/// QUIC application close codes at or above this carry a refusal: `base + RefusalKind::wire()`.
pub const CLOSE_REFUSED_BASE: u32 = 0x200;
