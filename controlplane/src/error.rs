//! The controller's refusals and failures, with a message for the user. Nothing here knows
//! HTTP: the API maps each kind to a status and Boundary's error kind in one place
//! (`http::ApiError::from`).

/// Why the controller refused or could not do something. The message says what happened and
/// what to do; it never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a missing or malformed field, a value out of range.
    #[error("{0}")]
    Invalid(String),
    /// No valid auth token, or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The current state precludes it: a name taken, no worker to choose, a target with no
    /// port.
    #[error("{0}")]
    Conflict(String),
    /// The request named a version other than the current one; read again and retry.
    #[error("{0}")]
    StaleVersion(String),
    /// A limit was reached (failed logins); try again later.
    #[error("{0}")]
    Exhausted(String),
    /// The controller is too busy right now.
    #[error("{0}")]
    Unavailable(String),
    /// The durable store failed; nothing was changed.
    #[error("{0}")]
    Store(String),
    /// Something that should not happen did (a broken invariant, a stored record that does not
    /// decode).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::Unauthenticated(m.into())
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::Forbidden(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }
    pub fn stale_version(m: impl Into<String>) -> Self {
        Self::StaleVersion(m.into())
    }
    pub fn exhausted(m: impl Into<String>) -> Self {
        Self::Exhausted(m.into())
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::Unavailable(m.into())
    }
    pub fn store(m: impl Into<String>) -> Self {
        Self::Store(m.into())
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::Internal(m.into())
    }

    /// The message for the user.
    pub fn message(&self) -> &str {
        match self {
            Self::Invalid(m)
            | Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::StaleVersion(m)
            | Self::Exhausted(m)
            | Self::Unavailable(m)
            | Self::Store(m)
            | Self::Internal(m) => m,
        }
    }
}

/// A result of the controller's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
