//! The Sluice controller: Boundary's model, a durable store, the session state machine, the
//! token issuer and the HTTP API.
//!
//! Layers, each importing only those below it: `http` (Boundary's API) → `domain` (the
//! operations, one room per resource) → `controller` (the state in memory and its durable
//! writes) → `store`, `model`, `error`. `cluster` is the workers' link.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod controller;
pub mod domain;
pub mod error;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod model;
pub mod pki;
pub mod private;
pub mod store;

pub use controller::{Controller, WorkerInfo, WorkerLink};
pub use domain::seed::{dev_ids, DevSeed};
pub use store::{RedbStore, Store};
