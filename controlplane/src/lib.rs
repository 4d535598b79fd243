//! The Sluice controller: Boundary's model, a durable store, the session state machine, the
//! token issuer and the HTTP API.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod cluster;
pub mod controller;
pub mod error;
pub mod filter;
pub mod fleet;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod model;
pub mod pki;
pub mod private;
pub mod resources;
pub mod scopes;
pub mod sessions;
pub mod store;
pub mod throttle;

pub use controller::{Controller, DevSeed, WorkerInfo, WorkerLink};
pub use store::{RedbStore, Store};
