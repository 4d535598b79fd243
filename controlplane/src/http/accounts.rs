//! Password accounts: create, list, read, delete, and password changes.

use super::prelude::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountQuery {
    #[serde(default)]
    auth_method_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountBody {
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
pub(super) struct AccountAttributes {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: String,
}

pub(super) fn account_json(a: &crate::model::Account) -> Value {
    json!({"id": a.id, "auth_method_id": a.auth_method_id, "type": "password",
           "user_id": a.user_id, "version": a.version,
           "created_time": a.created_time, "updated_time": a.updated_time,
           "scope": {"id": "global", "type": "global", "name": "global"},
           "attributes": {"login_name": a.login_name}})
}

/// The body of `:set-password` and `:change-password`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    current_password: Option<String>,
    #[serde(default)]
    new_password: Option<String>,
}

pub(super) async fn read_account(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(account_json(&c.read_account(&p, &id)?)))
}

pub(super) async fn delete_account(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_account(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn account_action(
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

pub(super) async fn create_account(
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

pub(super) async fn list_accounts(
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
