//! Static host catalogs, hosts and host sets.

use super::prelude::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogQuery {
    #[serde(default)]
    scope_id: Option<String>,
    #[serde(default)]
    host_catalog_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
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
pub(super) struct CreateAttributes {
    #[serde(default)]
    address: String,
}

pub(super) fn static_only(kind: &Option<String>) -> Result<(), ApiError> {
    match kind.as_deref() {
        None | Some("static") => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!(
            "type {k:?} is not supported; only static host catalogs, hosts and host sets exist"
        ))),
    }
}

pub(super) fn catalog_json(h: &HostCatalog) -> Value {
    json!({"id": h.id, "scope_id": h.scope_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time})
}

pub(super) fn host_json(h: &Host) -> Value {
    json!({"id": h.id, "host_catalog_id": h.catalog_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time,
           "attributes": {"address": h.address}})
}

pub(super) fn host_set_json(h: &HostSet) -> Value {
    json!({"id": h.id, "host_catalog_id": h.catalog_id, "type": "static", "name": h.name,
           "description": h.description, "version": h.version,
           "created_time": h.created_time, "updated_time": h.updated_time,
           "host_ids": h.host_ids})
}

pub(super) async fn create_host_catalog(
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

pub(super) async fn list_host_catalogs(
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

pub(super) async fn read_host_catalog(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(catalog_json(&c.read_host_catalog(&p, &id)?)))
}

pub(super) async fn delete_host_catalog(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host_catalog(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_host(
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

pub(super) async fn list_hosts(
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

pub(super) async fn read_host(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(host_json(&c.read_host(&p, &id)?)))
}

pub(super) async fn delete_host(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_host_set(
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

pub(super) async fn list_host_sets(
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

pub(super) async fn read_host_set(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(item(host_set_json(&c.read_host_set(&p, &id)?)))
}

pub(super) async fn host_set_action(
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

pub(super) async fn delete_host_set(
    State(c): State<Ctl>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    c.delete_host_set(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn update_host_resource(
    c: &Controller,
    headers: &HeaderMap,
    id: &str,
    body: &str,
) -> Result<Principal, ApiError> {
    let p = principal(c, headers)?;
    let u: crate::domain::hosts::HostUpdate = parse_body(body)?;
    static_only(&u.kind)?;
    c.update_host_resource(&p, id, u).await?;
    Ok(p)
}

pub(super) async fn update_host_catalog(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(catalog_json(&c.read_host_catalog(&p, &id)?)))
}

pub(super) async fn update_host(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(host_json(&c.read_host(&p, &id)?)))
}

pub(super) async fn update_host_set(
    State(c): State<Ctl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let p = update_host_resource(&c, &headers, &id, &body).await?;
    Ok(item(host_set_json(&c.read_host_set(&p, &id)?)))
}
