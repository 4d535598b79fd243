//! `sluice server`: the controller as operators run it, with workers in their own processes.
//!
//! ```toml
//! # controller.toml — every key is optional; these are the defaults.
//! [controller]
//! data_dir = "/var/lib/sluice"     # the redb store (sessions, resources, keys, cluster CA)
//! auth_token_time_to_live = "168h" # how long a new auth token lives ("30m", "12h", "1h30m")
//!
//! [api]
//! address = "127.0.0.1:9200"       # HTTPS API
//! tls = true                       # false serves plain HTTP (only behind a TLS proxy)
//! tls_cert_file = "/etc/sluice/api.pem"   # PEM chain; absent: one is generated, signed by
//! tls_key_file = "/etc/sluice/api.key"    # the cluster CA (written to data_dir/ca.pem)
//!
//! [cluster]
//! address = "127.0.0.1:9201"       # workers connect here (TLS 1.3, mutual once activated)
//!
//! [initial]                        # resources created on the first start only
//! login_name = "admin"
//! admin_password = "env://SLUICE_ADMIN_PASSWORD"   # generated and printed when absent
//! user_login_name = "user"
//! user_password = "file:///run/secrets/user"       # generated and printed when absent
//! host_address = "127.0.0.1"
//! target_default_port = 22
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use sluice_controlplane::dev_ids;
use sluice_controlplane::{Controller, DevSeed, RedbStore, Store};
use tracing::info;

use crate::args::ServerArgs;
use crate::output::block;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ControllerFile {
    controller: ControllerSection,
    api: ApiSection,
    cluster: Listener,
    initial: Initial,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ApiSection {
    address: Option<String>,
    tls: bool,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            address: None,
            tls: true,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ControllerSection {
    name: String,
    data_dir: PathBuf,
    auth_token_time_to_live: Option<String>,
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            name: "controller".into(),
            data_dir: "/var/lib/sluice".into(),
            auth_token_time_to_live: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Listener {
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Initial {
    login_name: String,
    admin_password: Option<String>,
    user_login_name: String,
    user_password: Option<String>,
    host_address: String,
    target_default_port: u16,
    target_session_max_seconds: u32,
    target_session_connection_limit: i32,
}

impl Default for Initial {
    fn default() -> Self {
        let d = DevSeed::default();
        Self {
            login_name: d.login_name,
            admin_password: None,
            user_login_name: d.unprivileged_login_name,
            user_password: None,
            host_address: "127.0.0.1".into(),
            target_default_port: d.target_default_port,
            target_session_max_seconds: d.target_session_max_seconds,
            target_session_connection_limit: d.target_session_connection_limit,
        }
    }
}

/// Reads a TOML configuration file, naming the file and the problem on failure.
pub fn read_config<T: for<'de> Deserialize<'de> + Default>(
    path: Option<&std::path::Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the configuration {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn password(given: Option<&str>, what: &'static str) -> anyhow::Result<(String, bool)> {
    match given {
        Some(v) => Ok((crate::secrets::resolve_private(v, what)?, false)),
        None => {
            use rand::distributions::{Alphanumeric, DistString};
            Ok((
                Alphanumeric.sample_string(&mut rand::thread_rng(), 20),
                true,
            ))
        }
    }
}

/// A Go-style duration such as `168h`, `30m` or `1h30m`, between 1 s and 10 years.
fn parse_time_to_live(v: &str) -> anyhow::Result<Duration> {
    let bad = || {
        anyhow::anyhow!(
            "auth_token_time_to_live {v:?} is not a duration between 1s and 87600h; write it like \"168h\", \"30m\" or \"1h30m\""
        )
    };
    let d: jiff::SignedDuration = v.trim().parse().map_err(|_| bad())?;
    if d < jiff::SignedDuration::from_secs(1) || d > jiff::SignedDuration::from_hours(87_600) {
        return Err(bad());
    }
    Ok(Duration::from_secs(d.as_secs() as u64))
}

fn addr(v: Option<&str>, default: &str, what: &str) -> anyhow::Result<SocketAddr> {
    let v = v.unwrap_or(default);
    v.parse()
        .with_context(|| format!("{what} {v:?} is not an address:port"))
}

pub async fn run(a: ServerArgs) -> anyhow::Result<ExitCode> {
    crate::dev::init_logging();
    let cfg: ControllerFile = read_config(a.config.as_deref())?;
    let data_dir = a.data_dir.unwrap_or(cfg.controller.data_dir);
    let token_ttl = match a
        .auth_token_ttl
        .as_deref()
        .or(cfg.controller.auth_token_time_to_live.as_deref())
    {
        Some(v) => Some(parse_time_to_live(v)?),
        None => None,
    };
    let api_addr = addr(
        a.api_addr.as_deref().or(cfg.api.address.as_deref()),
        "127.0.0.1:9200",
        "the API address",
    )?;
    let cluster_addr = addr(
        a.cluster_addr.as_deref().or(cfg.cluster.address.as_deref()),
        "127.0.0.1:9201",
        "the cluster address",
    )?;
    sluice_controlplane::private::ensure_dir(&data_dir, "the data directory")?;
    let store = Arc::new(RedbStore::open(&data_dir.join("sluice.redb"))?);
    let first_start = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .load(sluice_controlplane::store::Table::Resources)
                .map(|r| r.is_empty())
        })
        .await??
    };
    let mut initial_rows = Vec::new();
    let seed = if first_start {
        let i = &cfg.initial;
        let (admin_pw, admin_generated) =
            password(i.admin_password.as_deref(), "initial.admin_password")?;
        let (user_pw, user_generated) =
            password(i.user_password.as_deref(), "initial.user_password")?;
        let shown = |pw: &str, generated: bool| {
            if generated {
                pw.to_owned()
            } else {
                "(from the configuration)".to_owned()
            }
        };
        initial_rows = vec![
            ("Auth Method ID", dev_ids::AUTH_METHOD.to_owned()),
            ("Login Name", i.login_name.clone()),
            ("Password", shown(&admin_pw, admin_generated)),
            ("Unprivileged Login Name", i.user_login_name.clone()),
            ("Unprivileged Password", shown(&user_pw, user_generated)),
            ("Org Scope ID", dev_ids::ORG.to_owned()),
            ("Project Scope ID", dev_ids::PROJECT.to_owned()),
            ("Target ID", dev_ids::TARGET.to_owned()),
        ];
        Some(DevSeed {
            login_name: i.login_name.clone(),
            password: admin_pw,
            unprivileged_login_name: i.user_login_name.clone(),
            unprivileged_password: user_pw,
            host_address: i.host_address.clone(),
            target_default_port: i.target_default_port,
            target_session_max_seconds: i.target_session_max_seconds,
            target_session_connection_limit: i.target_session_connection_limit,
        })
    } else {
        None
    };
    let controller = tokio::task::spawn_blocking({
        let store = store.clone();
        // Sessions stay as they were: their workers are separate processes that reconnect
        // (or, if they do not within the grace period, the sweep ends their sessions).
        move || Controller::open(store, seed.as_ref(), false)
    })
    .await??;
    if let Some(ttl) = token_ttl {
        controller.set_auth_token_time_to_live(ttl);
    }

    let cluster = tokio::net::TcpListener::bind(cluster_addr)
        .await
        .with_context(|| format!("while listening for workers on {cluster_addr}"))?;
    let cluster_local = cluster.local_addr()?;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("while listening for the API on {api_addr}"))?;
    let api_local = listener.local_addr()?;
    let (tls, ca_path) = api_tls(&cfg.api, &controller, &data_dir, api_local)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster_task = tokio::spawn(sluice_controlplane::cluster::serve(
        controller.clone(),
        cluster,
    ));
    let sweeper = crate::dev::spawn_sweeper(controller.clone());

    println!("==> Sluice server configuration\n");
    if !initial_rows.is_empty() {
        println!("  Initial resources (first start; passwords are shown only now):");
        println!("{}", block(4, 27, &initial_rows));
    }
    println!(
        "{}",
        block(
            2,
            27,
            &[
                ("API Address", format!("{scheme}://{api_local}")),
                ("API CA Certificate", ca_path.clone()),
                ("Cluster Address", cluster_local.to_string()),
                ("Data Directory", data_dir.display().to_string()),
            ]
        )
    );
    println!("==> Sluice server started! Log data will stream in below:");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let shutdown = crate::dev::shutdown_signal()?;
    // It relays nothing, but an operator who signals every sluice process must not end it.
    crate::dev::report_on_sigusr1()?;
    let router = sluice_controlplane::http::router(controller.clone());
    match tls {
        Some(tls) => {
            let listener = sluice_controlplane::http::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
    .context("while serving the API")?;
    info!("shutting down");
    sweeper.abort();
    cluster_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), cluster_task).await;
    drop(controller);
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The API's TLS configuration (given files, or a certificate signed by the cluster CA for
/// the listening address and `localhost`), and what clients should trust.
fn api_tls(
    api: &ApiSection,
    controller: &Controller,
    data_dir: &std::path::Path,
    local: SocketAddr,
) -> anyhow::Result<(Option<rustls::ServerConfig>, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if !api.tls {
        tracing::warn!("the API serves plain HTTP (api.tls = false): put it behind a TLS proxy");
        return Ok((None, "(none: plain HTTP)".into()));
    }
    let (chain, key, ca_path) = match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(c), Some(k)) => {
            let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(c)
                .with_context(|| format!("while reading {}", c.display()))?
                .map(|r| r.map(|d| d.to_vec()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} holds no valid PEM certificate", c.display()))?;
            sluice_controlplane::private::check_file(k, "api.tls_key_file")?;
            let key = PrivateKeyDer::from_pem_file(k)
                .with_context(|| format!("{} holds no valid PEM private key", k.display()))?;
            (
                chain,
                key.secret_der().to_vec(),
                "(given with tls_cert_file)".to_owned(),
            )
        }
        (None, None) => {
            let mut names = vec!["localhost".to_owned(), local.ip().to_string()];
            if local.ip().is_unspecified() {
                names.push("127.0.0.1".into());
            }
            let (chain, key) = controller.api_identity(&names)?;
            let ca = data_dir.join("ca.pem");
            let pem = pem_cert(&controller.ca_cert());
            std::fs::write(&ca, pem).with_context(|| format!("while writing {}", ca.display()))?;
            (chain, key, ca.display().to_string())
        }
        _ => anyhow::bail!(
            "api.tls_cert_file and api.tls_key_file go together; give both or neither"
        ),
    };
    Ok((
        Some(sluice_controlplane::http::tls::server_config(chain, key)?),
        ca_path,
    ))
}

fn pem_cert(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::parse_time_to_live;
    use std::time::Duration;

    #[test]
    fn token_lifetimes_read_like_go_durations() {
        assert_eq!(
            parse_time_to_live("168h").unwrap(),
            Duration::from_secs(604_800)
        );
        assert_eq!(
            parse_time_to_live("1h30m").unwrap(),
            Duration::from_secs(5_400)
        );
        assert_eq!(
            parse_time_to_live(" 45s ").unwrap(),
            Duration::from_secs(45)
        );
        for bad in ["", "7d", "0s", "-1h", "abc", "100000h", "1.5"] {
            let e = parse_time_to_live(bad).unwrap_err().to_string();
            assert!(e.contains("168h"), "{bad}: {e}");
        }
    }
}
