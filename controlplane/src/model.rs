//! Boundary's resources as stored and served. Field names follow Boundary's JSON.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sluice_proto::{ConnectionClosedReason, TerminationReason};

/// A scope: `global`, an org `o_…` or a project `p_…`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scope {
    pub id: String,
    /// `global`, `org` or `project`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub parent_scope_id: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "epoch")]
    pub created_time: Timestamp,
    #[serde(default = "epoch")]
    pub updated_time: Timestamp,
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub scope_id: String,
    pub name: String,
    pub admin: bool,
    #[serde(default)]
    pub description: String,
    /// Projects whose targets a user (not admin) may see and authorize; empty: every project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_ids: Vec<String>,
    #[serde(default = "one")]
    pub version: u32,
}

impl User {
    /// Whether this user may see and authorize the targets of project `scope_id`.
    pub fn may_use_project(&self, scope_id: &str) -> bool {
        self.admin || self.project_ids.is_empty() || self.project_ids.iter().any(|p| p == scope_id)
    }
}

/// A password account of an auth method.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Account {
    pub id: String,
    pub auth_method_id: String,
    pub login_name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub user_id: String,
    /// Raised by every change (a new password, a new user); records stored before versions
    /// existed read as 1.
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "epoch")]
    pub created_time: Timestamp,
    #[serde(default = "epoch")]
    pub updated_time: Timestamp,
}

/// An auth token. Only the SHA-256 of its secret is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthToken {
    pub id: String,
    pub user_id: String,
    pub account_id: String,
    pub auth_method_id: String,
    pub secret_sha256: String,
    pub created_time: Timestamp,
    pub expiration_time: Timestamp,
}

/// A static host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub id: String,
    pub catalog_id: String,
    pub address: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "epoch")]
    pub created_time: Timestamp,
    #[serde(default = "epoch")]
    pub updated_time: Timestamp,
}

fn one() -> u32 {
    1
}

fn epoch() -> Timestamp {
    Timestamp::UNIX_EPOCH
}

/// A static host set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostSet {
    pub id: String,
    pub catalog_id: String,
    pub host_ids: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "epoch")]
    pub created_time: Timestamp,
    #[serde(default = "epoch")]
    pub updated_time: Timestamp,
}

/// A static host catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostCatalog {
    pub id: String,
    pub scope_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default = "epoch")]
    pub created_time: Timestamp,
    #[serde(default = "epoch")]
    pub updated_time: Timestamp,
}

/// A TCP target: a direct address or host sources, never both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub id: String,
    pub scope_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub host_source_ids: Vec<String>,
    pub default_port: u16,
    #[serde(default)]
    pub default_client_port: u16,
    pub session_max_seconds: u32,
    pub session_connection_limit: i32,
    /// Boolean expression over a worker's name and tags choosing the workers that may handle
    /// the target's sessions (Boundary's egress worker filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_worker_filter: Option<String>,
    pub version: u32,
    pub created_time: Timestamp,
    pub updated_time: Timestamp,
}

/// Session states, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Pending,
    Active,
    Canceling,
    Terminated,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Canceling => "canceling",
            Self::Terminated => "terminated",
        }
    }
}

/// One row of a session's state history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionState {
    pub status: SessionStatus,
    pub start_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Timestamp>,
}

/// One proxied connection of a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    pub connection_id: String,
    pub client_tcp_address: String,
    pub endpoint_tcp_address: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `connected` or `closed`.
    pub status: String,
    pub created_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_reason: Option<ConnectionClosedReason>,
}

/// A session, with its state history newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub id: String,
    pub target_id: String,
    pub scope_id: String,
    pub user_id: String,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub host_set_id: String,
    pub auth_token_id: String,
    /// `tcp://host:port`.
    pub endpoint: String,
    pub worker_id: String,
    pub connection_limit: i32,
    pub created_time: Timestamp,
    pub updated_time: Timestamp,
    pub expiration_time: Timestamp,
    pub version: u32,
    pub states: Vec<SessionState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,
    /// Kept in their own table (`store::Table::Connections`), not in the session's record;
    /// records written before 2026-11-29 carry them here and are moved on load.
    #[serde(default, skip_serializing)]
    pub connections: Vec<Connection>,
}

impl Session {
    /// The current status (the newest history row).
    pub fn status(&self) -> SessionStatus {
        self.states
            .first()
            .map_or(SessionStatus::Pending, |s| s.status)
    }
}

/// A worker registered with the controller (`sluice workers create controller-led`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Worker {
    pub id: String,
    pub scope_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where clients reach it, as it last reported.
    #[serde(default)]
    pub address: String,
    /// Tags from the worker's configuration, as it last reported.
    #[serde(default)]
    pub config_tags: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub release_version: String,
    pub created_time: Timestamp,
    pub updated_time: Timestamp,
    pub version: u32,
    /// SHA-256 (hex) of the one-time activation secret until it is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_sha256: Option<String>,
    /// SHA-256 (hex) of the certificate issued at activation: the worker's credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// The boot id of the worker process last connected.
    #[serde(default)]
    pub boot_id: u64,
}
