//! The HTTP API: Boundary's paths, verbs and JSON shapes under `/v1`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::fleet::WorkerView;
use crate::model::{Host, HostCatalog, HostSet};
use crate::resources::{ListChange, TargetCreate, TargetUpdate};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::controller::{Controller, Principal};
use crate::model::{Scope, Session, Target};

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
        let message = match e {
            E::Invalid(m)
            | E::Unauthenticated(m)
            | E::Forbidden(m)
            | E::NotFound(m)
            | E::Conflict(m)
            | E::StaleVersion(m)
            | E::Exhausted(m)
            | E::Unavailable(m)
            | E::Store(m)
            | E::Internal(m) => m,
        };
        Self::new(status, kind, message)
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

type Ctl = Arc<Controller>;

/// A request body as text. Unlike axum's `String` extractor, its refusals (not UTF-8, too
/// large) are JSON errors like every other.
struct Body(String);

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

fn principal(c: &Controller, headers: &HeaderMap) -> Result<Principal, ApiError> {
    Ok(c.principal(bearer(headers))?)
}

fn split_action(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((id, action)) => (id, Some(action)),
        None => (s, None),
    }
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &str) -> Result<T, ApiError> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthenticateBody {
    #[serde(default)]
    attributes: PasswordAttributes,
    #[serde(default)]
    #[allow(dead_code)]
    command: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    token_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PasswordAttributes {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: String,
}

async fn auth_method_action(
    State(c): State<Ctl>,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    if action != Some("authenticate") {
        return Err(ApiError::not_found(format!("no action {id_action}")));
    }
    let body: AuthenticateBody = parse_body(&body)?;
    let a = body.attributes;
    if a.login_name.is_empty() {
        return Err(ApiError::bad_request("login_name is required"));
    }
    let auth = c.authenticate(id, &a.login_name, &a.password).await?;
    let t = &auth.token;
    Ok(Json(json!({
        "command": "login",
        "attributes": {
            "id": t.id,
            "scope": {"id": "global", "type": "global", "name": "global"},
            "token": auth.bearer,
            "user_id": t.user_id,
            "auth_method_id": t.auth_method_id,
            "account_id": t.account_id,
            "created_time": t.created_time,
            "updated_time": t.created_time,
            "approximate_last_used_time": t.created_time,
            "expiration_time": t.expiration_time,
        }
    })))
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope_id: Option<String>,
    #[serde(default)]
    include_terminated: bool,
}

fn scope_json(s: &Scope) -> Value {
    json!({"id": s.id, "type": s.kind, "name": s.name, "description": s.description, "parent_scope_id": s.parent_scope_id})
}

/// A scope as `scopes read/list` show it: with its parent as `scope`.
fn scope_item_json(c: &Controller, s: &Scope) -> Value {
    let parent = c
        .scope_or_global(&s.parent_scope_id)
        .map(|p| scope_json(&p))
        .unwrap_or(Value::Null);
    json!({"id": s.id, "scope_id": s.parent_scope_id, "scope": parent, "type": s.kind,
           "name": s.name, "description": s.description, "version": s.version,
           "created_time": s.created_time, "updated_time": s.updated_time,
           "authorized_actions": ["no-op", "read", "update", "delete"]})
}

#[derive(Deserialize)]
struct ScopeListQuery {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScopeBody {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

async fn create_scope(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: ScopeBody = parse_body(&body)?;
    let parent = b
        .scope_id
        .ok_or_else(|| ApiError::bad_request("scope_id (the parent scope) is required"))?;
    let s = c
        .create_scope(
            &p,
            &parent,
            b.name.as_deref().unwrap_or_default(),
            b.description.as_deref().unwrap_or_default(),
        )
        .await?;
    Ok(item(scope_item_json(&c, &s)))
}

async fn list_scopes(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<ScopeListQuery>,
) -> Result<Json<Value>, ApiError> {
    let parent = q.scope_id.unwrap_or_else(|| "global".into());
    let items: Vec<Value> = c
        .list_scopes(&p, &parent, q.recursive)?
        .iter()
        .map(|s| scope_item_json(&c, s))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_scope(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(scope_item_json(&c, &c.read_scope(&p, &id)?)))
}

async fn update_scope(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: ScopeBody = parse_body(&body)?;
    if b.scope_id.is_some() {
        return Err(ApiError::bad_request(
            "a scope cannot move to another parent; create a new one",
        ));
    }
    let s = c
        .update_scope(&p, &id, b.version, b.name, b.description)
        .await?;
    Ok(item(scope_item_json(&c, &s)))
}

async fn delete_scope(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_scope(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn target_json(c: &Controller, t: &Target) -> Value {
    let scope = c
        .scope(&t.scope_id)
        .map(|s| scope_json(&s))
        .unwrap_or(Value::Null);
    let mut v = json!({
        "id": t.id,
        "scope_id": t.scope_id,
        "scope": scope,
        "name": t.name,
        "description": t.description,
        "created_time": t.created_time,
        "updated_time": t.updated_time,
        "version": t.version,
        "type": "tcp",
        "host_source_ids": t.host_source_ids,
        "session_max_seconds": t.session_max_seconds,
        "session_connection_limit": t.session_connection_limit,
        "attributes": {"default_port": t.default_port, "default_client_port": t.default_client_port},
        "authorized_actions": ["read", "authorize-session"],
    });
    if let Some(a) = &t.address {
        v["address"] = json!(a);
    }
    if let Some(f) = &t.egress_worker_filter {
        v["egress_worker_filter"] = json!(f);
    }
    v
}

async fn update_target(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let u: TargetUpdate = parse_body(&body)?;
    let t = c.update_target(&p, &id, u).await?;
    Ok(Json(
        json!({"status_code": 200, "item": target_json(&c, &t)}),
    ))
}

fn worker_json(v: &WorkerView) -> Value {
    let w = &v.worker;
    json!({
        "id": w.id,
        "scope_id": w.scope_id,
        "scope": {"id": "global", "type": "global", "name": "global"},
        "name": w.name,
        "description": w.description,
        "created_time": w.created_time,
        "updated_time": w.updated_time,
        "version": w.version,
        "address": w.address,
        "type": "pki",
        "config_tags": w.config_tags,
        "canonical_tags": w.config_tags,
        "release_version": w.release_version,
        "last_status_time": v.last_status_time,
        "connected": v.connected,
        "activated": w.activation_sha256.is_none(),
        "session_count": v.session_count,
        "active_connection_count": v.active_connection_count,
        "authorized_actions": ["read", "delete"],
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateWorkerBody {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_worker(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: CreateWorkerBody = parse_body(&body)?;
    if b.scope_id.as_deref().is_some_and(|s| s != "global") {
        return Err(ApiError::bad_request("workers live in the global scope"));
    }
    let (w, token) = c
        .create_worker_controller_led(&p, &b.name, &b.description)
        .await?;
    let mut item = worker_json(&WorkerView {
        worker: w,
        connected: false,
        last_status_time: None,
        session_count: 0,
        active_connection_count: 0,
    });
    item["controller_generated_activation_token"] = json!(token);
    Ok((
        StatusCode::OK,
        Json(json!({"status_code": 200, "item": item})),
    ))
}

async fn scope_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    match (id, action) {
        ("global", Some("rotate-keys")) => {
            let p = principal(&c, &headers)?;
            c.rotate_keys(&p).await?;
            Ok(Json(json!({"status_code": 200})))
        }
        (_, Some("rotate-keys")) => Err(ApiError::bad_request(
            "token-signing keys belong to the global scope; use -scope-id global",
        )),
        _ => Err(ApiError::not_found(format!("no action {id_action}"))),
    }
}

async fn list_workers(State(c): State<Ctl>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let p = principal(&c, &headers)?;
    let items: Vec<Value> = c.list_workers(&p)?.iter().map(worker_json).collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_worker(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = c.read_worker(&p, &id)?;
    Ok(Json(json!({"status_code": 200, "item": worker_json(&v)})))
}

async fn delete_worker(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_worker(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_targets(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<ScopeQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope_id = q
        .scope_id
        .ok_or_else(|| ApiError::bad_request("scope_id is required"))?;
    let items: Vec<Value> = c
        .list_targets(&p, &scope_id)?
        .iter()
        .map(|t| target_json(&c, t))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_target(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = c.read_target(&p, &id)?;
    Ok(Json(
        json!({"status_code": 200, "item": target_json(&c, &t)}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthorizeBody {
    #[serde(default)]
    host_id: Option<String>,
}

async fn target_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    let change = match action {
        Some("add-host-sources") => Some(ListChange::Add),
        Some("remove-host-sources") => Some(ListChange::Remove),
        Some("set-host-sources") => Some(ListChange::Set),
        Some("authorize-session") => None,
        _ => return Err(ApiError::not_found(format!("no action {id_action}"))),
    };
    let p = principal(&c, &headers)?;
    if let Some(change) = change {
        let b: ListBody = parse_body(&body)?;
        let t = c
            .change_host_sources(&p, id, b.version, change, b.host_source_ids)
            .await?;
        return Ok(Json(
            json!({"status_code": 200, "item": target_json(&c, &t)}),
        ));
    }
    let body: AuthorizeBody = parse_body(&body)?;
    let host_id = body.host_id.filter(|h| !h.is_empty());
    let a = c.authorize_session(&p, id, host_id.as_deref()).await?;
    let s = &a.session;
    Ok(Json(json!({
        "status_code": 200,
        "item": {
            "session_id": s.id,
            "target_id": s.target_id,
            "scope": scope_json(&a.scope),
            "created_time": s.created_time,
            "user_id": s.user_id,
            "host_set_id": s.host_set_id,
            "host_id": s.host_id,
            "type": "tcp",
            "authorization_token": a.authorization_token,
            "endpoint": s.endpoint,
            "expiration_time": s.expiration_time,
            "connection_limit": s.connection_limit,
            "worker_info": [{"address": a.worker_addr}],
        }
    })))
}

/// A session in Boundary's JSON shape.
pub fn session_json(c: &Controller, s: &Session) -> Value {
    let scope = c
        .scope(&s.scope_id)
        .map(|sc| scope_json(&sc))
        .unwrap_or(Value::Null);
    let states: Vec<Value> = s
        .states
        .iter()
        .map(|r| {
            let mut v = json!({"status": r.status.as_str(), "start_time": r.start_time});
            if let Some(e) = r.end_time {
                v["end_time"] = json!(e);
            }
            v
        })
        .collect();
    let connections: Vec<Value> = s
        .connections
        .iter()
        .map(|k| {
            json!({
                "connection_id": k.connection_id,
                "client_tcp_address": k.client_tcp_address,
                "endpoint_tcp_address": k.endpoint_tcp_address,
                "bytes_up": k.bytes_up,
                "bytes_down": k.bytes_down,
                "status": k.status,
                "created_time": k.created_time,
                "closed_time": k.closed_time,
                "closed_reason": k.closed_reason.map(|r| r.as_str()),
            })
        })
        .collect();
    let mut v = json!({
        "id": s.id,
        "target_id": s.target_id,
        "scope": scope,
        "created_time": s.created_time,
        "updated_time": s.updated_time,
        "version": s.version,
        "type": "tcp",
        "expiration_time": s.expiration_time,
        "auth_token_id": s.auth_token_id,
        "user_id": s.user_id,
        "host_set_id": s.host_set_id,
        "host_id": s.host_id,
        "scope_id": s.scope_id,
        "endpoint": s.endpoint,
        "worker_id": s.worker_id,
        "connection_limit": s.connection_limit,
        "states": states,
        "status": s.status().as_str(),
        "authorized_actions": ["read:self", "cancel:self"],
        "connections": connections,
    });
    if let Some(r) = s.termination_reason {
        v["termination_reason"] = json!(r.as_str());
    }
    v
}

async fn list_sessions(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<ScopeQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope_id = q
        .scope_id
        .ok_or_else(|| ApiError::bad_request("scope_id is required"))?;
    let items: Vec<Value> = c
        .list_sessions(&p, &scope_id, q.include_terminated)?
        .iter()
        .map(|s| session_json(&c, s))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_session(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = c.read_session(&p, &id)?;
    Ok(Json(
        json!({"status_code": 200, "item": session_json(&c, &s)}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    version: Option<u32>,
}

async fn session_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (id, action) = split_action(&id_action);
    if action != Some("cancel") {
        return Err(ApiError::not_found(format!("no action {id_action}")));
    }
    let p = principal(&c, &headers)?;
    let body: CancelBody = parse_body(&body)?;
    let s = c.cancel_session(&p, id, body.version).await?;
    Ok(Json(json!({"status_code": 200, "item": session_json(&c, &s)})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListBody {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    host_source_ids: Vec<String>,
    #[serde(default)]
    host_ids: Vec<String>,
}

async fn create_target(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: TargetCreate = parse_body(&body)?;
    let t = c.create_target(&p, b).await?;
    Ok(Json(
        json!({"status_code": 200, "item": target_json(&c, &t)}),
    ))
}

async fn delete_target(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_target(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CatalogQuery {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    host_catalog_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    scope_id: String,
    #[serde(default)]
    host_catalog_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    attributes: CreateAttributes,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateAttributes {
    #[serde(default)]
    address: String,
}

fn static_only(kind: &Option<String>) -> Result<(), ApiError> {
    match kind.as_deref() {
        None | Some("static") => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!(
            "type {k:?} is not supported; only static host catalogs, hosts and host sets exist"
        ))),
    }
}

fn catalog_json(h: &HostCatalog) -> Value {
    json!({"id": h.id, "scope_id": h.scope_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time})
}

fn host_json(h: &Host) -> Value {
    json!({"id": h.id, "host_catalog_id": h.catalog_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time,
           "attributes": {"address": h.address}})
}

fn host_set_json(h: &HostSet) -> Value {
    json!({"id": h.id, "host_catalog_id": h.catalog_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time,
           "host_ids": h.host_ids})
}

fn item(v: Value) -> Json<Value> {
    Json(json!({"status_code": 200, "item": v}))
}

async fn create_host_catalog(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: CreateBody = parse_body(&body)?;
    static_only(&b.kind)?;
    let h = c
        .create_host_catalog(&p, &b.scope_id, &b.name, &b.description)
        .await?;
    Ok(item(catalog_json(&h)))
}

async fn list_host_catalogs(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<CatalogQuery>,
) -> Result<Json<Value>, ApiError> {
    let scope = q
        .scope_id
        .ok_or_else(|| ApiError::bad_request("scope_id is required"))?;
    let items: Vec<Value> = c
        .list_host_catalogs(&p, &scope)
        .iter()
        .map(catalog_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_host_catalog(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(catalog_json(&c.read_host_catalog(&p, &id)?)))
}

async fn delete_host_catalog(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host_catalog(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_host(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: CreateBody = parse_body(&body)?;
    static_only(&b.kind)?;
    let h = c
        .create_host(
            &p,
            &b.host_catalog_id,
            &b.attributes.address,
            &b.name,
            &b.description,
        )
        .await?;
    Ok(item(host_json(&h)))
}

async fn list_hosts(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<CatalogQuery>,
) -> Result<Json<Value>, ApiError> {
    let cat = q
        .host_catalog_id
        .ok_or_else(|| ApiError::bad_request("host_catalog_id is required"))?;
    let items: Vec<Value> = c.list_hosts(&p, &cat).iter().map(host_json).collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_host(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(host_json(&c.read_host(&p, &id)?)))
}

async fn delete_host(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_host_set(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: CreateBody = parse_body(&body)?;
    static_only(&b.kind)?;
    let h = c
        .create_host_set(&p, &b.host_catalog_id, &b.name, &b.description)
        .await?;
    Ok(item(host_set_json(&h)))
}

async fn list_host_sets(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<CatalogQuery>,
) -> Result<Json<Value>, ApiError> {
    let cat = q
        .host_catalog_id
        .ok_or_else(|| ApiError::bad_request("host_catalog_id is required"))?;
    let items: Vec<Value> = c
        .list_host_sets(&p, &cat)
        .iter()
        .map(host_set_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_host_set(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(host_set_json(&c.read_host_set(&p, &id)?)))
}

async fn host_set_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    let change = match action {
        Some("add-hosts") => ListChange::Add,
        Some("remove-hosts") => ListChange::Remove,
        Some("set-hosts") => ListChange::Set,
        _ => return Err(ApiError::not_found(format!("no action {id_action}"))),
    };
    let p = principal(&c, &headers)?;
    let b: ListBody = parse_body(&body)?;
    let h = c
        .change_set_hosts(&p, id, b.version, change, b.host_ids)
        .await?;
    Ok(item(host_set_json(&h)))
}

async fn delete_host_set(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host_set(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An auth token as `auth-tokens read/list` show it; never its secret.
fn auth_token_json(t: &crate::model::AuthToken) -> Value {
    json!({"id": t.id, "scope_id": "global",
           "scope": {"id": "global", "type": "global", "name": "global"},
           "user_id": t.user_id, "auth_method_id": t.auth_method_id, "account_id": t.account_id,
           "created_time": t.created_time, "updated_time": t.created_time,
           "approximate_last_used_time": t.created_time, "expiration_time": t.expiration_time,
           "authorized_actions": ["read:self", "delete:self"]})
}

async fn list_auth_tokens(State(c): State<Ctl>, p: Principal) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = c.list_auth_tokens(&p).iter().map(auth_token_json).collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_auth_token(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(auth_token_json(&c.read_auth_token(&p, &id)?)))
}

async fn delete_auth_token(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_auth_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(c: &Controller, u: &crate::model::User) -> Value {
    json!({"id": u.id, "scope_id": u.scope_id, "name": u.name, "description": u.description,
           "version": u.version, "role": if u.admin { "admin" } else { "user" },
           "project_ids": u.project_ids, "account_ids": c.user_accounts(&u.id)})
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    account_ids: Vec<String>,
    #[serde(default)]
    project_ids: Option<Vec<String>>,
}

fn role(r: Option<&str>) -> Result<Option<bool>, ApiError> {
    match r {
        None => Ok(None),
        Some("admin") => Ok(Some(true)),
        Some("user") => Ok(Some(false)),
        Some(o) => Err(ApiError::bad_request(format!(
            "role {o:?} does not exist; use admin or user"
        ))),
    }
}

async fn create_user(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: UserBody = parse_body(&body)?;
    if b.scope_id.as_deref().is_some_and(|s| s != "global") {
        return Err(ApiError::bad_request("users live in the global scope"));
    }
    let admin = role(b.role.as_deref())?.unwrap_or(false);
    let u = c
        .create_user(
            &p,
            b.name.as_deref().unwrap_or_default(),
            b.description.as_deref().unwrap_or_default(),
            admin,
            b.project_ids.unwrap_or_default(),
        )
        .await?;
    Ok(item(user_json(&c, &u)))
}

async fn list_users(State(c): State<Ctl>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let p = principal(&c, &headers)?;
    let items: Vec<Value> = c.list_users(&p).iter().map(|u| user_json(&c, u)).collect();
    Ok(Json(json!({ "items": items })))
}

async fn read_user(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(user_json(&c, &c.read_user(&p, &id)?)))
}

async fn update_user(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: UserBody = parse_body(&body)?;
    let admin = role(b.role.as_deref())?;
    let u = c
        .update_user(
            &p,
            &id,
            b.version,
            crate::resources::UserChange {
                name: b.name,
                description: b.description,
                admin,
                project_ids: b.project_ids,
            },
        )
        .await?;
    Ok(item(user_json(&c, &u)))
}

async fn delete_user(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_user(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    if action != Some("add-accounts") {
        return Err(ApiError::not_found(format!("no action {id_action}")));
    }
    let p = principal(&c, &headers)?;
    let b: UserBody = parse_body(&body)?;
    let u = c.add_accounts(&p, id, b.version, &b.account_ids).await?;
    Ok(item(user_json(&c, &u)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AccountQuery {
    #[serde(default)]
    auth_method_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    #[serde(default)]
    auth_method_id: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    attributes: AccountAttributes,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AccountAttributes {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: String,
}

fn account_json(a: &crate::model::Account) -> Value {
    json!({"id": a.id, "auth_method_id": a.auth_method_id, "type": "password",
           "user_id": a.user_id, "version": a.version,
           "created_time": a.created_time, "updated_time": a.updated_time,
           "scope": {"id": "global", "type": "global", "name": "global"},
           "attributes": {"login_name": a.login_name}})
}

/// The body of `:set-password` and `:change-password`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    current_password: Option<String>,
    #[serde(default)]
    new_password: Option<String>,
}

async fn read_account(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(account_json(&c.read_account(&p, &id)?)))
}

async fn delete_account(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_account(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn account_action(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id_action): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let (id, action) = split_action(&id_action);
    let p = principal(&c, &headers)?;
    let b: PasswordBody = parse_body(&body)?;
    let required = |v: Option<String>, name: &str| {
        v.ok_or_else(|| ApiError::bad_request(format!("{name} is required")))
    };
    let a = match action {
        Some("set-password") => {
            let pw = required(b.password, "password")?;
            c.set_account_password(&p, id, b.version, &pw).await?
        }
        Some("change-password") => {
            let current = required(b.current_password, "current_password")?;
            let new = required(b.new_password, "new_password")?;
            c.change_account_password(&p, id, b.version, &current, &new)
                .await?
        }
        _ => return Err(ApiError::not_found(format!("no action {id_action}"))),
    };
    Ok(item(account_json(&a)))
}

async fn create_account(
    State(c): State<Ctl>,
    p: Principal,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let b: AccountBody = parse_body(&body)?;
    if b.kind.as_deref().is_some_and(|k| k != "password") {
        return Err(ApiError::bad_request("only password accounts exist"));
    }
    let a = c
        .create_account(
            &p,
            &b.auth_method_id,
            &b.attributes.login_name,
            &b.attributes.password,
            b.user_id.as_deref().filter(|u| !u.is_empty()),
        )
        .await?;
    Ok(item(account_json(&a)))
}

async fn list_accounts(
    State(c): State<Ctl>,
    p: Principal,
    Query(q): Query<AccountQuery>,
) -> Result<Json<Value>, ApiError> {
    let am = q
        .auth_method_id
        .ok_or_else(|| ApiError::bad_request("auth_method_id is required"))?;
    let items: Vec<Value> = c.list_accounts(&p, &am)?.iter().map(account_json).collect();
    Ok(Json(json!({ "items": items })))
}

async fn update_host_resource(
    c: &Controller,
    headers: &HeaderMap,
    id: &str,
    body: &str,
) -> Result<Principal, ApiError> {
    let p = principal(c, headers)?;
    let u: crate::resources::HostUpdate = parse_body(body)?;
    static_only(&u.kind)?;
    c.update_host_resource(&p, id, u).await?;
    Ok(p)
}

async fn update_host_catalog(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(catalog_json(&c.read_host_catalog(&p, &id)?)))
}

async fn update_host(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(host_json(&c.read_host(&p, &id)?)))
}

async fn update_host_set(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(host_set_json(&c.read_host_set(&p, &id)?)))
}

/// Parses `body` as every JSON request body the API accepts, and worker filters as given in
/// one; for the `api_body` fuzz target. Must never panic.
#[cfg(any(fuzzing, test))]
pub(crate) fn parse_every_body(body: &str) {
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
    let _ = parse_body::<crate::resources::HostUpdate>(body);
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
        if let Ok(parsed) = crate::filter::Filter::parse(&f) {
            let _ = parsed.matches("w", &std::collections::BTreeMap::new());
        }
    }
}

/// Whether `body` parses as the request body that the seed `name` stands for, with any
/// worker filter in it valid.
#[cfg(test)]
pub(crate) fn accepted_as(name: &str, body: &str) -> bool {
    let filter_ok = |f: Option<String>| f.is_none_or(|f| crate::filter::Filter::parse(&f).is_ok());
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
        "seed_filter" => crate::filter::Filter::parse(body).is_ok(),
        _ => false,
    }
}
