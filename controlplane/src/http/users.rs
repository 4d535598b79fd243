//! Users: create, list, read, update, delete, and their accounts.

use super::prelude::*;

pub(super) fn user_json(c: &Controller, u: &crate::model::User) -> Value {
    json!({"id": u.id, "scope_id": u.scope_id, "name": u.name, "description": u.description,
           "version": u.version, "role": if u.admin { "admin" } else { "user" },
           "project_ids": u.project_ids, "account_ids": c.user_accounts(&u.id)})
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct UserBody {
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

pub(super) fn role(r: Option<&str>) -> Result<Option<bool>, ApiError> {
    match r {
        None => Ok(None),
        Some("admin") => Ok(Some(true)),
        Some("user") => Ok(Some(false)),
        Some(o) => Err(ApiError::bad_request(format!(
            "role {o:?} does not exist; use admin or user"
        ))),
    }
}

pub(super) async fn create_user(
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

pub(super) async fn list_users(
    State(c): State<Ctl>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = c.list_users(&p).iter().map(|u| user_json(&c, u)).collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn read_user(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(user_json(&c, &c.read_user(&p, &id)?)))
}

pub(super) async fn update_user(
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
            crate::domain::users::UserChange {
                name: b.name,
                description: b.description,
                admin,
                project_ids: b.project_ids,
            },
        )
        .await?;
    Ok(item(user_json(&c, &u)))
}

pub(super) async fn delete_user(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_user(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn user_action(
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
