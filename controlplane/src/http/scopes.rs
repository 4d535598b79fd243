//! Scopes: global, orgs and projects, and the global scope's `rotate-keys` action.

use super::prelude::*;

/// A scope as `scopes read/list` show it: with its parent as `scope`.
pub(super) fn scope_item_json(c: &Controller, s: &Scope) -> Value {
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
pub(super) struct ScopeListQuery {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeBody {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

pub(super) async fn create_scope(
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

pub(super) async fn list_scopes(
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

pub(super) async fn read_scope(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(scope_item_json(&c, &c.read_scope(&p, &id)?)))
}

pub(super) async fn update_scope(
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

pub(super) async fn delete_scope(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_scope(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn scope_action(
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
