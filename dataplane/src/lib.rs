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
#![deny(unsafe_code)]

pub mod client;
pub mod cluster;
mod congestion;
pub mod diag;
mod gate;
pub mod net;
mod pool;
mod registry;
mod relay;
mod server;
mod spin;
mod splice;
mod stream_transport;
pub mod tls;
mod trim;
mod udp;
mod uring;

pub use pool::DEFAULT_READ_AHEAD_BUDGET;
pub use registry::unix_now;
pub use server::{Worker, WorkerConfig, WorkerHandle};
pub use spin::default_window as default_busy_poll;
pub use spin::with_polling as with_busy_polling;
pub use uring::IoDriver;

/// QUIC application close code a client sends when its user ends the session.
pub const CLOSE_CLIENT_DONE: u32 = 0x01;
/// QUIC application close codes at or above this carry a refusal: `base + RefusalKind::wire()`.
pub const CLOSE_REFUSED_BASE: u32 = 0x200;
