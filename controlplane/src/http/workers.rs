//! Workers: controller-led registration, list, read, delete.

use super::prelude::*;

pub(super) fn worker_json(v: &WorkerView) -> Value {
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
pub(super) struct CreateWorkerBody {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

pub(super) async fn create_worker(
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

pub(super) async fn list_workers(
    State(c): State<Ctl>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = c.list_workers(&p)?.iter().map(worker_json).collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn read_worker(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = c.read_worker(&p, &id)?;
    Ok(Json(json!({"status_code": 200, "item": worker_json(&v)})))
}

pub(super) async fn delete_worker(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_worker(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
