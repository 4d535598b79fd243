//! Sessions: list, read, cancel.

use super::prelude::*;

/// A session in Boundary's JSON shape.
pub(crate) fn session_json(c: &Controller, s: &Session) -> Value {
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

pub(super) async fn list_sessions(
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

pub(super) async fn read_session(
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
pub(super) struct CancelBody {
    #[serde(default)]
    version: Option<u32>,
}

pub(super) async fn session_action(
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
