//! The controller API client and the commands that only talk to it.

use std::process::ExitCode;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::args::{
    Common, CreateTarget, CreateWorker, Format, PasswordArgs, Sessions, Targets, UpdateTarget,
    Workers,
};
use crate::output;

/// A client of the controller's `/v1` API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(common: &Common, token: Option<String>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(std::time::Duration::from_secs(30));
        if let Some(path) = &common.tls_ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("-tls-ca-cert {} cannot be read", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("-tls-ca-cert {} holds no PEM certificate", path.display())
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if common.tls_insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().context("while creating the HTTP client")?;
        Ok(Self {
            http,
            base: common.addr.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client that presents the user's auth token.
    pub fn authed(common: &Common) -> anyhow::Result<Self> {
        let token = crate::secrets::token(common.token.as_deref())?;
        Self::new(common, Some(token))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            let hint = if why.contains("certificate") || why.contains("UnknownIssuer") {
                "; pass the controller's CA with -tls-ca-cert (SLUICE_CACERT)"
            } else {
                "; is the controller running, and is -addr/SLUICE_ADDR right?"
            };
            anyhow!(
                "could not reach the controller at {}: {why}{hint}",
                self.base
            )
        })?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_owned();
        let text = resp
            .text()
            .await
            .context("while reading the controller's answer")?;
        answer(&url, status, &content_type, &text)
    }

    pub async fn authorize(&self, target_id: &str, host_id: Option<&str>) -> anyhow::Result<Value> {
        let body = match host_id {
            Some(h) => json!({"host_id": h}),
            None => json!({}),
        };
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/targets/{target_id}:authorize-session"),
                Some(body),
            )
            .await
            .with_context(|| format!("while authorizing a session to {target_id}"))?;
        Ok(v["item"].clone())
    }
}

/// The controller's answer to a request to `url`. Only the controller's own shapes count: a
/// JSON object (an error's carries its `message`), or no body at all with 204. Anything else,
/// such as a load balancer's HTML page or another service on the port, is an error naming what
/// answered, so nothing is taken for done that the controller never did.
fn answer(
    url: &str,
    status: reqwest::StatusCode,
    content_type: &str,
    text: &str,
) -> anyhow::Result<Value> {
    let v = if text.trim().is_empty() {
        None
    } else if content_type.starts_with("application/json") {
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object)
    } else {
        None
    };
    let not_controller = || {
        let mut sample: String = text
            .trim()
            .chars()
            .take(80)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.trim().chars().count() > 80 {
            sample.push('…');
        }
        let body = if sample.is_empty() {
            "an empty body".to_owned()
        } else {
            format!("{content_type}: {sample:?}")
        };
        anyhow!(
            "the server at {url} answered HTTP {} with {body}, not the controller's JSON: \
             is -addr/SLUICE_ADDR a Sluice controller's API address?",
            status.as_u16()
        )
    };
    match v {
        Some(v) if status.is_success() => Ok(v),
        Some(v) => match v["message"].as_str() {
            Some(msg) => Err(anyhow!("{msg} (HTTP {})", status.as_u16())),
            None => Err(not_controller()),
        },
        None if status == reqwest::StatusCode::NO_CONTENT => Ok(Value::Null),
        None => Err(not_controller()),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

pub async fn authenticate(common: &Common, a: PasswordArgs) -> anyhow::Result<ExitCode> {
    let password = crate::secrets::secret_or_prompt(
        a.password.as_deref(),
        "-password",
        "Please enter the password (it will be hidden): ",
    )?;
    let api = Api::new(common, None)?;
    let v = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/auth-methods/{}:authenticate", a.auth_method_id),
            Some(json!({"command": "login", "attributes": {"login_name": a.login_name, "password": password}})),
        )
        .await?;
    let attrs = &v["attributes"];
    if common.format == Format::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let token = attrs["token"]
        .as_str()
        .ok_or_else(|| anyhow!("the controller's answer has no token"))?;
    let path = crate::secrets::store_token(token)?;
    print!(
        "\nAuthentication information:\n{}",
        output::block(
            4,
            19,
            &[
                (
                    "Account ID",
                    attrs["account_id"].as_str().unwrap_or_default().to_owned()
                ),
                (
                    "Auth Method ID",
                    attrs["auth_method_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                ),
                (
                    "Expiration Time",
                    output::rfc1123(&attrs["expiration_time"])
                ),
                (
                    "User ID",
                    attrs["user_id"].as_str().unwrap_or_default().to_owned()
                ),
            ],
        )
    );
    println!("\nThe token was successfully stored in {}.", path.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn targets(common: &Common, t: Targets) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match t {
        Targets::AuthorizeSession { id, host_id } => {
            let item = api.authorize(&id, host_id.as_deref()).await?;
            match common.format {
                Format::Json => print_json(&json!({"status_code": 200, "item": item})),
                Format::Table => print!("{}", output::authorization(&item)),
            }
        }
        Targets::List { scope_id } => {
            let v = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/targets?scope_id={scope_id}"),
                    None,
                )
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => {
                    let items = v["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        println!("No targets found");
                    } else {
                        println!("\nTarget information:");
                        for (i, it) in items.iter().enumerate() {
                            if i > 0 {
                                println!();
                            }
                            print!("{}", output::target(it));
                        }
                    }
                }
            }
        }
        Targets::Update(UpdateTarget::Tcp(u)) => {
            let version = match u.version {
                Some(v) => v,
                None => {
                    let cur = api
                        .call(reqwest::Method::GET, &format!("/v1/targets/{}", u.id), None)
                        .await?;
                    cur["item"]["version"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("target {} has no version", u.id))?
                        as u32
                }
            };
            let mut body = json!({"version": version});
            let mut attributes = serde_json::Map::new();
            if let Some(v) = u.name {
                body["name"] = json!(v);
            }
            if let Some(v) = u.description {
                body["description"] = json!(v);
            }
            if let Some(v) = u.session_max_seconds {
                body["session_max_seconds"] = json!(v);
            }
            if let Some(v) = u.session_connection_limit {
                body["session_connection_limit"] = json!(v);
            }
            if let Some(v) = u.egress_worker_filter {
                body["egress_worker_filter"] = json!(v);
            }
            if let Some(v) = u.default_port {
                attributes.insert("default_port".into(), json!(v));
            }
            if let Some(v) = u.default_client_port {
                attributes.insert("default_client_port".into(), json!(v));
            }
            if !attributes.is_empty() {
                body["attributes"] = Value::Object(attributes);
            }
            let v = api
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/targets/{}", u.id),
                    Some(body),
                )
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => print!("\nTarget information:\n{}", output::target(&v["item"])),
            }
        }
        Targets::Create(CreateTarget::Tcp(c)) => {
            let mut attributes = serde_json::Map::new();
            if let Some(p) = c.default_port {
                attributes.insert("default_port".into(), json!(p));
            }
            if let Some(p) = c.default_client_port {
                attributes.insert("default_client_port".into(), json!(p));
            }
            let mut body = json!({"scope_id": c.scope_id, "type": "tcp", "name": c.name,
                                  "description": c.description, "attributes": attributes});
            if let Some(a) = c.address {
                body["address"] = json!(a);
            }
            if let Some(v) = c.session_max_seconds {
                body["session_max_seconds"] = json!(v);
            }
            if let Some(v) = c.session_connection_limit {
                body["session_connection_limit"] = json!(v);
            }
            if let Some(v) = c.egress_worker_filter {
                body["egress_worker_filter"] = json!(v);
            }
            let v = api
                .call(reqwest::Method::POST, "/v1/targets", Some(body))
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => print!("\nTarget information:\n{}", output::target(&v["item"])),
            }
        }
        Targets::Delete { id } => {
            api.call(reqwest::Method::DELETE, &format!("/v1/targets/{id}"), None)
                .await?;
            crate::resources::deleted(common);
        }
        Targets::AddHostSources(a) => host_sources(&api, common, "add-host-sources", a).await?,
        Targets::RemoveHostSources(a) => {
            host_sources(&api, common, "remove-host-sources", a).await?
        }
        Targets::SetHostSources(a) => host_sources(&api, common, "set-host-sources", a).await?,
        Targets::Read { id } => {
            let v = api
                .call(reqwest::Method::GET, &format!("/v1/targets/{id}"), None)
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => print!("\nTarget information:\n{}", output::target(&v["item"])),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sessions(common: &Common, s: Sessions) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    let v = match s {
        Sessions::List {
            scope_id,
            include_terminated,
        } => {
            let v = api
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/v1/sessions?scope_id={scope_id}&include_terminated={include_terminated}"
                    ),
                    None,
                )
                .await?;
            if common.format == Format::Table {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                print!("{}", output::session_list(&items));
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        Sessions::Read { id } => {
            api.call(reqwest::Method::GET, &format!("/v1/sessions/{id}"), None)
                .await?
        }
        Sessions::Cancel { id, version } => {
            let body = version.map_or_else(|| json!({}), |v| json!({"version": v}));
            api.call(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}:cancel"),
                Some(body),
            )
            .await?
        }
    };
    match common.format {
        Format::Json => print_json(&v),
        Format::Table => print!("{}", output::session_item(&v["item"])),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(common: &Common, w: Workers) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    match w {
        Workers::Create(CreateWorker::ControllerLed { name, description }) => {
            let v = api
                .call(
                    reqwest::Method::POST,
                    "/v1/workers:create:controller-led",
                    Some(json!({"scope_id": "global", "name": name, "description": description})),
                )
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => print!("\nWorker information:\n{}", output::worker(&v["item"])),
            }
        }
        Workers::List => {
            let v = api.call(reqwest::Method::GET, "/v1/workers", None).await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => {
                    let items = v["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        println!("No workers found");
                    } else {
                        println!("\nWorker information:");
                        for (i, it) in items.iter().enumerate() {
                            if i > 0 {
                                println!();
                            }
                            print!("{}", output::worker(it));
                        }
                    }
                }
            }
        }
        Workers::Read { id } => {
            let v = api
                .call(reqwest::Method::GET, &format!("/v1/workers/{id}"), None)
                .await?;
            match common.format {
                Format::Json => print_json(&v),
                Format::Table => print!("\nWorker information:\n{}", output::worker(&v["item"])),
            }
        }
        Workers::Delete { id } => {
            api.call(reqwest::Method::DELETE, &format!("/v1/workers/{id}"), None)
                .await?;
            match common.format {
                Format::Json => print_json(&json!({"status_code": 204})),
                Format::Table => println!("The delete operation completed successfully."),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate_keys(common: &Common, scope_id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::authed(common)?;
    let v = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/scopes/{scope_id}:rotate-keys"),
            Some(json!({})),
        )
        .await?;
    match common.format {
        Format::Json => print_json(&v),
        Format::Table => println!("The key rotation completed successfully."),
    }
    Ok(ExitCode::SUCCESS)
}

async fn host_sources(
    api: &Api,
    common: &Common,
    action: &str,
    a: crate::args::HostSourcesArgs,
) -> anyhow::Result<()> {
    let path = format!("/v1/targets/{}", a.id);
    let version = crate::resources::version_of(api, &path, a.version).await?;
    let body = json!({"version": version, "host_source_ids": a.host_source});
    let v = api
        .call(
            reqwest::Method::POST,
            &format!("{path}:{action}"),
            Some(body),
        )
        .await?;
    match common.format {
        Format::Json => print_json(&v),
        Format::Table => print!("\nTarget information:\n{}", output::target(&v["item"])),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::answer;
    use reqwest::StatusCode;

    #[test]
    fn only_the_controllers_json_is_taken_as_an_answer() {
        let url = "http://127.0.0.1:1/v1/sessions/s_1:cancel";
        let v = answer(url, StatusCode::OK, "application/json", r#"{"item":{}}"#).unwrap();
        assert!(v["item"].is_object());
        assert!(answer(url, StatusCode::NO_CONTENT, "no content type", "")
            .unwrap()
            .is_null());
        let e = answer(
            url,
            StatusCode::FORBIDDEN,
            "application/json",
            r#"{"message":"no"}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "no (HTTP 403)");
        for (status, ct, body) in [
            (
                StatusCode::OK,
                "text/html",
                "<html><body>Welcome to nginx!</body></html>",
            ),
            (StatusCode::OK, "application/json", "[1, 2]"),
            (StatusCode::OK, "text/plain", ""),
            (
                StatusCode::BAD_GATEWAY,
                "text/html",
                "<h1>502 Bad Gateway</h1>",
            ),
            (StatusCode::OK, "application/json", "not json"),
        ] {
            let e = answer(url, status, ct, body).unwrap_err().to_string();
            assert!(
                e.contains(url) && e.contains("not the controller's JSON"),
                "{status} {ct} {body}: {e}"
            );
        }
    }
}
