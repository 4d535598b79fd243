//! Commands for host catalogs, hosts, host sets and logout.

use std::process::ExitCode;

use anyhow::anyhow;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::Api;
use crate::args::{Accounts, CreateAccount, Role, Users};
use crate::args::{
    Common, CreateStaticCatalog, CreateStaticHost, CreateStaticSet, Format, HostCatalogs, HostSets,
    Hosts, SetHostsArgs,
};
use crate::output;

/// Prints one item (table or JSON).
pub fn show(common: &Common, title: &str, v: &Value) {
    match common.format {
        Format::Json => println!("{}", serde_json::to_string(v).unwrap_or_default()),
        Format::Table => print!("\n{title} information:\n{}", output::resource(&v["item"])),
    }
}

/// Prints a list (table or JSON).
pub fn show_list(common: &Common, title: &str, none: &str, v: &Value) {
    match common.format {
        Format::Json => println!("{}", serde_json::to_string(v).unwrap_or_default()),
        Format::Table => {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("{none}");
                return;
            }
            println!("\n{title} information:");
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", output::resource(it));
            }
        }
    }
}

pub fn deleted(common: &Common) {
    match common.format {
        Format::Json => println!("{}", json!({"status_code": 204})),
        Format::Table => println!("The delete operation completed successfully."),
    }
}

/// Reads one resource and prints it.
async fn read(api: &Api, common: &Common, path: &str, title: &str) -> anyhow::Result<()> {
    let v = api.call(Method::GET, path, None).await?;
    show(common, title, &v);
    Ok(())
}

/// Lists resources and prints them, or `none` when there are none.
async fn list(
    api: &Api,
    common: &Common,
    path: &str,
    title: &str,
    none: &str,
) -> anyhow::Result<()> {
    let v = api.call(Method::GET, path, None).await?;
    show_list(common, title, none, &v);
    Ok(())
}

/// Deletes a resource and says so.
async fn delete(api: &Api, common: &Common, path: &str) -> anyhow::Result<()> {
    api.call(Method::DELETE, path, None).await?;
    deleted(common);
    Ok(())
}

/// The version to change: the one given, or the current one read first.
pub async fn version_of(api: &Api, path: &str, given: Option<u32>) -> anyhow::Result<u32> {
    if let Some(v) = given {
        return Ok(v);
    }
    let cur = api.call(Method::GET, path, None).await?;
    cur["item"]["version"]
        .as_u64()
        .map(|v| v as u32)
        .ok_or_else(|| anyhow!("{path} has no version"))
}

async fn update_static(
    api: &Api,
    common: &Common,
    collection: &str,
    title: &str,
    crate::args::UpdateStatic::Static(a): crate::args::UpdateStatic,
) -> anyhow::Result<()> {
    let path = format!("/v1/{collection}/{}", a.id);
    let version = version_of(api, &path, a.version).await?;
    let mut body = json!({"version": version});
    if let Some(n) = a.name {
        body["name"] = json!(n);
    }
    if let Some(d) = a.description {
        body["description"] = json!(d);
    }
    if let Some(addr) = a.address {
        body["attributes"] = json!({"address": addr});
    }
    let v = api.call(Method::PATCH, &path, Some(body)).await?;
    show(common, title, &v);
    Ok(())
}

pub async fn scopes(common: &Common, s: crate::args::Scopes) -> anyhow::Result<ExitCode> {
    use crate::args::Scopes;
    let api = Api::authed(common)?;
    match s {
        Scopes::Create {
            scope_id,
            name,
            description,
        } => {
            let body = json!({"scope_id": scope_id, "name": name, "description": description});
            let v = api.call(Method::POST, "/v1/scopes", Some(body)).await?;
            show(common, "Scope", &v);
        }
        Scopes::List {
            scope_id,
            recursive,
        } => {
            list(
                &api,
                common,
                &format!("/v1/scopes?scope_id={scope_id}&recursive={recursive}"),
                "Scope",
                "No child scopes found",
            )
            .await?;
        }
        Scopes::Read { id } => {
            read(&api, common, &format!("/v1/scopes/{id}"), "Scope").await?;
        }
        Scopes::Update {
            id,
            name,
            description,
            version,
        } => {
            let path = format!("/v1/scopes/{id}");
            let version = version_of(&api, &path, version).await?;
            let mut body = json!({"version": version});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = api.call(Method::PATCH, &path, Some(body)).await?;
            show(common, "Scope", &v);
        }
        Scopes::Delete { id } => {
            delete(&api, common, &format!("/v1/scopes/{id}")).await?;
        }
        Scopes::RotateKeys { scope_id } => return crate::api::rotate_keys(common, &scope_id).await,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn host_catalogs(common: &Common, c: HostCatalogs) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match c {
        HostCatalogs::Create(CreateStaticCatalog::Static {
            scope_id,
            name,
            description,
        }) => {
            let body = json!({"scope_id": scope_id, "type": "static", "name": name, "description": description});
            let v = api
                .call(Method::POST, "/v1/host-catalogs", Some(body))
                .await?;
            show(common, "Host catalog", &v);
        }
        HostCatalogs::Update(u) => {
            update_static(&api, common, "host-catalogs", "Host catalog", u).await?
        }
        HostCatalogs::List { scope_id } => {
            list(
                &api,
                common,
                &format!("/v1/host-catalogs?scope_id={scope_id}"),
                "Host catalog",
                "No host catalogs found",
            )
            .await?;
        }
        HostCatalogs::Read { id } => {
            read(
                &api,
                common,
                &format!("/v1/host-catalogs/{id}"),
                "Host catalog",
            )
            .await?;
        }
        HostCatalogs::Delete { id } => {
            delete(&api, common, &format!("/v1/host-catalogs/{id}")).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn hosts(common: &Common, h: Hosts) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match h {
        Hosts::Create(CreateStaticHost::Static {
            host_catalog_id,
            address,
            name,
            description,
        }) => {
            let body = json!({"host_catalog_id": host_catalog_id, "type": "static", "name": name,
                              "description": description, "attributes": {"address": address}});
            let v = api.call(Method::POST, "/v1/hosts", Some(body)).await?;
            show(common, "Host", &v);
        }
        Hosts::Update(u) => update_static(&api, common, "hosts", "Host", u).await?,
        Hosts::List { host_catalog_id } => {
            list(
                &api,
                common,
                &format!("/v1/hosts?host_catalog_id={host_catalog_id}"),
                "Host",
                "No hosts found",
            )
            .await?;
        }
        Hosts::Read { id } => {
            read(&api, common, &format!("/v1/hosts/{id}"), "Host").await?;
        }
        Hosts::Delete { id } => {
            delete(&api, common, &format!("/v1/hosts/{id}")).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn change_hosts(
    api: &Api,
    common: &Common,
    action: &str,
    a: SetHostsArgs,
) -> anyhow::Result<()> {
    let path = format!("/v1/host-sets/{}", a.id);
    let version = version_of(api, &path, a.version).await?;
    let body = json!({"version": version, "host_ids": a.host});
    let v = api
        .call(Method::POST, &format!("{path}:{action}"), Some(body))
        .await?;
    show(common, "Host set", &v);
    Ok(())
}

pub async fn host_sets(common: &Common, h: HostSets) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match h {
        HostSets::Create(CreateStaticSet::Static {
            host_catalog_id,
            name,
            description,
        }) => {
            let body = json!({"host_catalog_id": host_catalog_id, "type": "static", "name": name, "description": description});
            let v = api.call(Method::POST, "/v1/host-sets", Some(body)).await?;
            show(common, "Host set", &v);
        }
        HostSets::Update(u) => update_static(&api, common, "host-sets", "Host set", u).await?,
        HostSets::List { host_catalog_id } => {
            list(
                &api,
                common,
                &format!("/v1/host-sets?host_catalog_id={host_catalog_id}"),
                "Host set",
                "No host sets found",
            )
            .await?;
        }
        HostSets::Read { id } => {
            read(&api, common, &format!("/v1/host-sets/{id}"), "Host set").await?;
        }
        HostSets::Delete { id } => {
            delete(&api, common, &format!("/v1/host-sets/{id}")).await?;
        }
        HostSets::AddHosts(a) => change_hosts(&api, common, "add-hosts", a).await?,
        HostSets::RemoveHosts(a) => change_hosts(&api, common, "remove-hosts", a).await?,
        HostSets::SetHosts(a) => change_hosts(&api, common, "set-hosts", a).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Revokes the stored (or given) auth token at the controller, then forgets it locally.
pub async fn logout(common: &Common) -> anyhow::Result<ExitCode> {
    let token = crate::secrets::token(common.token.as_deref())?;
    let id = token
        .get(..13)
        .filter(|id| id.starts_with("at_"))
        .ok_or_else(|| anyhow!("the stored auth token is malformed; authenticate again"))?
        .to_owned();
    let api = Api::new(common, Some(token))?;
    api.call(Method::DELETE, &format!("/v1/auth-tokens/{id}"), None)
        .await?;
    if common.token.is_none() {
        crate::secrets::forget_token()?;
    }
    println!("The auth token {id} was revoked.");
    Ok(ExitCode::SUCCESS)
}

pub async fn auth_tokens(common: &Common, t: crate::args::AuthTokens) -> anyhow::Result<ExitCode> {
    use crate::args::AuthTokens;
    let api = Api::authed(common)?;
    match t {
        AuthTokens::List { scope_id } => {
            list(
                &api,
                common,
                &format!("/v1/auth-tokens?scope_id={scope_id}"),
                "Auth Token",
                "No auth tokens found",
            )
            .await?;
        }
        AuthTokens::Read { id } => {
            read(&api, common, &format!("/v1/auth-tokens/{id}"), "Auth Token").await?;
        }
        AuthTokens::Delete { id } => {
            delete(&api, common, &format!("/v1/auth-tokens/{id}")).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::User => "user",
    }
}

pub async fn users(common: &Common, u: Users) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match u {
        Users::Create {
            scope_id,
            name,
            description,
            role,
            project_ids,
        } => {
            let body = json!({"scope_id": scope_id, "name": name, "description": description,
                              "role": role_name(role), "project_ids": project_ids});
            let v = api.call(Method::POST, "/v1/users", Some(body)).await?;
            show(common, "User", &v);
        }
        Users::List => {
            let v = api.call(Method::GET, "/v1/users", None).await?;
            show_list(common, "User", "No users found", &v);
        }
        Users::Read { id } => {
            read(&api, common, &format!("/v1/users/{id}"), "User").await?;
        }
        Users::Update {
            id,
            version,
            name,
            description,
            role,
            project_ids,
            all_projects,
        } => {
            let path = format!("/v1/users/{id}");
            let version = version_of(&api, &path, version).await?;
            let mut body = json!({"version": version});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(r) = role {
                body["role"] = json!(role_name(r));
            }
            if all_projects || !project_ids.is_empty() {
                body["project_ids"] = json!(project_ids);
            }
            let v = api.call(Method::PATCH, &path, Some(body)).await?;
            show(common, "User", &v);
        }
        Users::Delete { id } => {
            delete(&api, common, &format!("/v1/users/{id}")).await?;
        }
        Users::AddAccounts {
            id,
            account,
            version,
        } => {
            let path = format!("/v1/users/{id}");
            let version = version_of(&api, &path, version).await?;
            let body = json!({"version": version, "account_ids": account});
            let v = api
                .call(Method::POST, &format!("{path}:add-accounts"), Some(body))
                .await?;
            show(common, "User", &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn accounts(common: &Common, a: Accounts) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match a {
        Accounts::Create(CreateAccount::Password {
            auth_method_id,
            login_name,
            password,
            user_id,
        }) => {
            let password = crate::secrets::resolve(&password, "-password")?;
            let mut body = json!({"auth_method_id": auth_method_id, "type": "password",
                                  "attributes": {"login_name": login_name, "password": password}});
            if let Some(u) = user_id {
                body["user_id"] = json!(u);
            }
            let v = api.call(Method::POST, "/v1/accounts", Some(body)).await?;
            show(common, "Account", &v);
        }
        Accounts::List { auth_method_id } => {
            list(
                &api,
                common,
                &format!("/v1/accounts?auth_method_id={auth_method_id}"),
                "Account",
                "No accounts found",
            )
            .await?;
        }
        Accounts::Read { id } => {
            read(&api, common, &format!("/v1/accounts/{id}"), "Account").await?;
        }
        Accounts::Delete { id } => {
            delete(&api, common, &format!("/v1/accounts/{id}")).await?;
        }
        Accounts::SetPassword {
            id,
            password,
            version,
        } => {
            let password = crate::secrets::secret_or_prompt(
                password.as_deref(),
                "-password",
                "Please enter the new password (it will be hidden): ",
            )?;
            let path = format!("/v1/accounts/{id}");
            let version = version_of(&api, &path, version).await?;
            let body = json!({"version": version, "password": password});
            let v = api
                .call(Method::POST, &format!("{path}:set-password"), Some(body))
                .await?;
            show(common, "Account", &v);
        }
        Accounts::ChangePassword {
            id,
            current_password,
            new_password,
            version,
        } => {
            let current = crate::secrets::secret_or_prompt(
                current_password.as_deref(),
                "-current-password",
                "Please enter the current password (it will be hidden): ",
            )?;
            let new = crate::secrets::secret_or_prompt(
                new_password.as_deref(),
                "-new-password",
                "Please enter the new password (it will be hidden): ",
            )?;
            let path = format!("/v1/accounts/{id}");
            let version = version_of(&api, &path, version).await?;
            let body =
                json!({"version": version, "current_password": current, "new_password": new});
            let v = api
                .call(Method::POST, &format!("{path}:change-password"), Some(body))
                .await?;
            show(common, "Account", &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}
