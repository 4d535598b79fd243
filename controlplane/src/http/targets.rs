//! Targets: create, list, read, update, delete, host sources, and `authorize-session`.

use super::prelude::*;

pub(super) fn target_json(c: &Controller, t: &Target) -> Value {
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

pub(super) async fn update_target(
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

pub(super) async fn list_targets(
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

pub(super) async fn read_target(
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
pub(super) struct AuthorizeBody {
    #[serde(default)]
    host_id: Option<String>,
}

pub(super) async fn target_action(
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

pub(super) async fn create_target(
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

pub(super) async fn delete_target(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_target(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
