//! Password authentication (`auth-methods/{id}:authenticate`) and auth tokens (list, read, logout).

use super::prelude::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthenticateBody {
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
pub(super) struct PasswordAttributes {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn auth_method_action(
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

/// An auth token as `auth-tokens read/list` show it; never its secret.
pub(super) fn auth_token_json(t: &crate::model::AuthToken) -> Value {
    json!({"id": t.id, "scope_id": "global",
           "scope": {"id": "global", "type": "global", "name": "global"},
           "user_id": t.user_id, "auth_method_id": t.auth_method_id, "account_id": t.account_id,
           "created_time": t.created_time, "updated_time": t.created_time,
           "approximate_last_used_time": t.created_time, "expiration_time": t.expiration_time,
           "authorized_actions": ["read:self", "delete:self"]})
}

pub(super) async fn list_auth_tokens(
    State(c): State<Ctl>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = c.list_auth_tokens(&p).iter().map(auth_token_json).collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn read_auth_token(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(auth_token_json(&c.read_auth_token(&p, &id)?)))
}

pub(super) async fn delete_auth_token(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_auth_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
