//! The HTTP API: Boundary's paths, verbs and JSON shapes under `/v1`, one module per resource.
//!
//! This is the only layer that knows HTTP: handlers take the caller as a [`Principal`]
//! extractor, parse the request, call the controller and shape its answer as Boundary's JSON;
//! a domain [`crate::error::Error`] becomes a status and Boundary's error kind in
//! `ApiError::from`.

mod accounts;
mod auth;
mod hosts;
mod scopes;
mod sessions;
mod targets;
pub mod tls;
mod users;
mod workers;

/// What every handler module uses.
mod prelude {
    pub(super) use super::{
        item, parse_body, principal, scope_json, split_action, ApiError, Body, Ctl, ListBody,
        ScopeQuery,
    };
    pub(super) use crate::controller::{Controller, Principal};
    pub(super) use crate::domain::targets::{TargetCreate, TargetUpdate};
    pub(super) use crate::domain::workers::WorkerView;
    pub(super) use crate::domain::ListChange;
    pub(super) use crate::model::{Host, HostCatalog, HostSet, Scope, Session, Target};
    pub(super) use axum::extract::{Path, Query, State};
    pub(super) use axum::http::{HeaderMap, StatusCode};
    pub(super) use axum::response::{IntoResponse, Response};
    pub(super) use axum::Json;
    pub(super) use serde::Deserialize;
    pub(super) use serde_json::{json, Value};
}

use accounts::*;
use auth::*;
use hosts::*;
use scopes::*;
use sessions::*;
use targets::*;
use users::*;
use workers::*;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::controller::{Controller, Principal};
use crate::model::Scope;

/// An API refusal: HTTP status, Boundary's error kind, and a message for the user.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthenticated", m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PermissionDenied", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "FailedPrecondition", m)
    }
    pub fn too_many_requests(m: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted", m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", m)
    }
}

impl From<crate::error::Error> for ApiError {
    /// The one place a domain refusal becomes an HTTP status and Boundary's error kind.
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error as E;
        let (status, kind) = match &e {
            E::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            E::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "PermissionDenied"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            E::Conflict(_) | E::StaleVersion(_) => (StatusCode::CONFLICT, "FailedPrecondition"),
            E::Exhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted"),
            E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            E::Store(_) | E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        };
        Self::new(status, kind, e.message())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status_code": self.status.as_u16(),
            "kind": self.kind,
            "message": self.message,
        });
        (self.status, Json(body)).into_response()
    }
}

pub(super) type Ctl = Arc<Controller>;

/// A request body as text. Unlike axum's `String` extractor, its refusals (not UTF-8, too
/// large) are JSON errors like every other.
pub(super) struct Body(pub(super) String);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    e.status(),
                    "ResourceExhausted",
                    "the request body is too large: the API accepts at most 2 MB",
                )
            } else {
                ApiError::new(
                    e.status(),
                    "InvalidArgument",
                    format!("the request body could not be read: {}", e.body_text()),
                )
            }
        })?;
        String::from_utf8(bytes.into())
            .map(Body)
            .map_err(|_| ApiError::bad_request("the request body is not UTF-8 JSON"))
    }
}

/// The router for `/v1`.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/auth-methods/{id_action}", post(auth_method_action))
        .route("/v1/targets", get(list_targets).post(create_target))
        .route(
            "/v1/targets/{id}",
            get(read_target)
                .post(target_action)
                .patch(update_target)
                .delete(delete_target),
        )
        .route(
            "/v1/host-catalogs",
            get(list_host_catalogs).post(create_host_catalog),
        )
        .route(
            "/v1/host-catalogs/{id}",
            get(read_host_catalog)
                .patch(update_host_catalog)
                .delete(delete_host_catalog),
        )
        .route("/v1/hosts", get(list_hosts).post(create_host))
        .route(
            "/v1/hosts/{id}",
            get(read_host).patch(update_host).delete(delete_host),
        )
        .route("/v1/host-sets", get(list_host_sets).post(create_host_set))
        .route(
            "/v1/host-sets/{id}",
            get(read_host_set)
                .post(host_set_action)
                .patch(update_host_set)
                .delete(delete_host_set),
        )
        .route(
            "/v1/auth-tokens/{id}",
            get(read_auth_token).delete(delete_auth_token),
        )
        .route("/v1/auth-tokens", get(list_auth_tokens))
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}",
            get(read_user)
                .patch(update_user)
                .delete(delete_user)
                .post(user_action),
        )
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route(
            "/v1/accounts/{id_action}",
            get(read_account)
                .delete(delete_account)
                .post(account_action),
        )
        .route("/v1/workers:create:controller-led", post(create_worker))
        .route("/v1/workers", get(list_workers))
        .route("/v1/scopes", get(list_scopes).post(create_scope))
        .route(
            "/v1/scopes/{id_action}",
            get(read_scope)
                .post(scope_action)
                .patch(update_scope)
                .delete(delete_scope),
        )
        .route("/v1/workers/{id}", get(read_worker).delete(delete_worker))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(read_session).post(session_action))
        .fallback(|| async { ApiError::not_found("no such API path") })
        .with_state(controller)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The caller, from the request's bearer token: a handler that takes a `Principal` runs only
/// for an authenticated caller, and the refusal (401) is the same for every route.
impl axum::extract::FromRequestParts<Ctl> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        c: &Ctl,
    ) -> Result<Self, ApiError> {
        principal(c, &parts.headers)
    }
}

pub(super) fn principal(c: &Controller, headers: &HeaderMap) -> Result<Principal, ApiError> {
    Ok(c.principal(bearer(headers))?)
}

pub(super) fn split_action(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((id, action)) => (id, Some(action)),
        None => (s, None),
    }
}

pub(super) fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    body: &str,
) -> Result<T, ApiError> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

#[derive(Deserialize)]
pub(super) struct ScopeQuery {
    pub(super) scope_id: Option<String>,
    #[serde(default)]
    pub(super) include_terminated: bool,
}

pub(super) fn scope_json(s: &Scope) -> Value {
    json!({"id": s.id, "type": s.kind, "name": s.name, "description": s.description, "parent_scope_id": s.parent_scope_id})
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ListBody {
    #[serde(default)]
    pub(super) version: Option<u32>,
    #[serde(default)]
    pub(super) host_source_ids: Vec<String>,
    #[serde(default)]
    pub(super) host_ids: Vec<String>,
}

pub(super) fn item(v: Value) -> Json<Value> {
    Json(json!({"status_code": 200, "item": v}))
}

/// Parses `body` as every JSON request body the API accepts, and worker filters as given in
/// one; for the `api_body` fuzz target. Must never panic.
#[cfg(any(fuzzing, test))]
pub(crate) fn parse_every_body(body: &str) {
    use crate::domain::targets::{TargetCreate, TargetUpdate};
    let _ = parse_body::<AuthenticateBody>(body);
    let _ = parse_body::<ScopeBody>(body);
    let _ = parse_body::<CreateWorkerBody>(body);
    let _ = parse_body::<AuthorizeBody>(body);
    let _ = parse_body::<CancelBody>(body);
    let _ = parse_body::<ListBody>(body);
    let _ = parse_body::<CreateBody>(body);
    let _ = parse_body::<UserBody>(body);
    let _ = parse_body::<AccountBody>(body);
    let _ = parse_body::<PasswordBody>(body);
    let _ = parse_body::<crate::domain::hosts::HostUpdate>(body);
    let filters = [
        parse_body::<TargetCreate>(body)
            .ok()
            .and_then(|t| t.egress_worker_filter),
        parse_body::<TargetUpdate>(body)
            .ok()
            .and_then(|t| t.egress_worker_filter),
        Some(body.to_owned()),
    ];
    for f in filters.into_iter().flatten() {
        if let Ok(parsed) = crate::domain::filter::Filter::parse(&f) {
            let _ = parsed.matches("w", &std::collections::BTreeMap::new());
        }
    }
}

/// Whether `body` parses as the request body that the seed `name` stands for, with any
/// worker filter in it valid.
#[cfg(test)]
pub(crate) fn accepted_as(name: &str, body: &str) -> bool {
    use crate::domain::targets::{TargetCreate, TargetUpdate};
    let filter_ok =
        |f: Option<String>| f.is_none_or(|f| crate::domain::filter::Filter::parse(&f).is_ok());
    match name {
        "seed_authenticate" => parse_body::<AuthenticateBody>(body).is_ok(),
        "seed_target_create" => parse_body::<TargetCreate>(body)
            .is_ok_and(|t| t.egress_worker_filter.is_some() && filter_ok(t.egress_worker_filter)),
        "seed_target_update" => parse_body::<TargetUpdate>(body)
            .is_ok_and(|t| t.egress_worker_filter.is_some() && filter_ok(t.egress_worker_filter)),
        "seed_scope" => parse_body::<ScopeBody>(body).is_ok(),
        "seed_host_create" => parse_body::<CreateBody>(body).is_ok(),
        "seed_list_change" => parse_body::<ListBody>(body).is_ok(),
        "seed_cancel" => parse_body::<CancelBody>(body).is_ok(),
        "seed_authorize" => parse_body::<AuthorizeBody>(body).is_ok(),
        "seed_filter" => crate::domain::filter::Filter::parse(body).is_ok(),
        _ => false,
    }
}
