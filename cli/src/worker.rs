//! `sluice worker`: a worker in its own process, linked to a controller.
//!
//! ```toml
//! # worker.toml — every key but the first start's activation token is optional.
//! [worker]
//! name = "w1"
//! initial_upstreams = ["127.0.0.1:9201"]     # controller cluster addresses
//! public_addr = "127.0.0.1:9202"             # what clients dial (default: the listener's)
//! auth_storage_path = "/var/lib/sluice-worker"   # identity after activation (0600)
//! # From `sluice workers create controller-led`; needed on the first start only.
//! controller_generated_activation_token = "env://SLUICE_ACTIVATION_TOKEN"
//! threads = 0                                # 0: one per core
//! allow_plaintext = false                    # accept the plaintext tcp transport
//! tcp_buffer_bytes = 0                       # fixed TCP socket buffers; 0: kernel autotuning
//! read_ahead_budget_bytes = 67108864         # bytes read ahead of stuck writes, all relays
//! io_driver = "epoll"                        # or "uring": io_uring for plaintext relays
//! busy_poll_us = 50                          # poll this long after a small transfer; 0: off
//!                                            # (by default 50, and 0 on a machine with one CPU)
//!
//! [worker.tags]
//! env = ["prod"]
//!
//! [listener]
//! address = "127.0.0.1:9202"                 # QUIC (UDP) and TLS/TCP on the same port
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sluice_dataplane::cluster::{activate, run_link, LinkConfig};
use sluice_dataplane::{tls, Worker, WorkerConfig};
use tracing::info;

use crate::args::WorkerArgs;
use crate::output::block;

/// The longest busy-polling window a worker accepts, in microseconds (1 s).
pub(crate) const MAX_BUSY_POLL_US: u64 = 1_000_000;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct WorkerFile {
    worker: WorkerSection,
    listener: ListenerSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WorkerSection {
    name: String,
    description: String,
    public_addr: Option<String>,
    initial_upstreams: Vec<String>,
    auth_storage_path: PathBuf,
    controller_generated_activation_token: Option<String>,
    threads: usize,
    allow_plaintext: bool,
    tcp_buffer_bytes: usize,
    read_ahead_budget_bytes: usize,
    io_driver: String,
    busy_poll_us: u64,
    tags: BTreeMap<String, Vec<String>>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            public_addr: None,
            initial_upstreams: vec!["127.0.0.1:9201".into()],
            auth_storage_path: "/var/lib/sluice-worker".into(),
            controller_generated_activation_token: None,
            threads: 0,
            allow_plaintext: false,
            tcp_buffer_bytes: 0,
            read_ahead_budget_bytes: sluice_dataplane::DEFAULT_READ_AHEAD_BUDGET,
            io_driver: "epoll".into(),
            busy_poll_us: sluice_dataplane::default_busy_poll().as_micros() as u64,
            tags: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ListenerSection {
    address: String,
}

impl Default for ListenerSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9202".into(),
        }
    }
}

/// What activation left in `auth_storage_path`.
#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    worker_id: String,
    cert: Vec<u8>,
    ca_cert: Vec<u8>,
    key: Vec<u8>,
}

const IDENTITY_FILE: &str = "worker-auth.json";
const KEYS_FILE: &str = "token-keys.json";

/// Writes `bytes` to `dir/name` atomically, readable only by the owner.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    sluice_controlplane::private::write_atomic(
        dir,
        "the worker's auth_storage_path",
        name,
        bytes,
        "the worker's file",
    )?;
    Ok(())
}

/// The token-verification keys the controller sent last, if any were kept.
fn load_keys(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read(dir.join(KEYS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn load_identity(dir: &Path) -> anyhow::Result<Option<StoredIdentity>> {
    use sluice_controlplane::private;
    private::ensure_dir(dir, "the worker's auth_storage_path")?;
    let path = dir.join(IDENTITY_FILE);
    private::check_file(&path, "the worker's identity")?;
    private::check_file(&dir.join(KEYS_FILE), "the worker's kept token keys")?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is unreadable; remove it and activate the worker again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("while reading {}", path.display())),
    }
}

fn save_identity(dir: &Path, id: &StoredIdentity) -> anyhow::Result<()> {
    write_private(dir, IDENTITY_FILE, &serde_json::to_vec(id)?)
}

fn parse_tag(t: &str) -> anyhow::Result<(String, String)> {
    match t.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!("-tag {t:?} must be KEY=VALUE"),
    }
}

pub async fn run(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    crate::dev::init_logging();
    let cfg: WorkerFile = crate::server::read_config(a.config.as_deref())?;
    let mut w = cfg.worker;
    if let Some(n) = a.name {
        w.name = n;
    }
    if !a.initial_upstream.is_empty() {
        w.initial_upstreams = a.initial_upstream;
    }
    if let Some(p) = a.auth_storage_path {
        w.auth_storage_path = p;
    }
    if let Some(t) = a.activation_token {
        w.controller_generated_activation_token = Some(t);
    }
    if let Some(n) = a.workers {
        w.threads = n;
    }
    if a.public_addr.is_some() {
        w.public_addr = a.public_addr;
    }
    for t in &a.tags {
        let (k, v) = parse_tag(t)?;
        w.tags.entry(k).or_default().push(v);
    }
    let io_driver: sluice_dataplane::IoDriver = match a.io_driver {
        Some(d) => d,
        None => w
            .io_driver
            .parse()
            .map_err(|e| anyhow::anyhow!("worker.io_driver in the configuration: {e}"))?,
    };
    let busy_poll_us = a.busy_poll_us.unwrap_or(w.busy_poll_us);
    if busy_poll_us > MAX_BUSY_POLL_US {
        anyhow::bail!(
            "worker.busy_poll_us in the configuration is {busy_poll_us}; it must be at most \
             {MAX_BUSY_POLL_US} (1 s). It is how long a thread polls after a small transfer, \
             in microseconds: 50 is the default, 0 turns polling off"
        );
    }
    let listen = a.proxy_addr.unwrap_or(cfg.listener.address);
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("the listener address {listen:?} is not an address:port"))?;

    let identity = match load_identity(&w.auth_storage_path)? {
        Some(id) => id,
        None => {
            let token = w.controller_generated_activation_token.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "this worker has no identity in {} yet: start it once with \
                     controller_generated_activation_token (from `sluice workers create controller-led`)",
                    w.auth_storage_path.display()
                )
            })?;
            let token = crate::secrets::resolve(token, "controller_generated_activation_token")?;
            let (key, public) = sluice_controlplane::pki::worker_key_pair()
                .context("while generating the worker key")?;
            let (worker_id, cert, ca_cert) =
                activate(&w.initial_upstreams, &token, public)
                    .await
                    .map_err(|e| anyhow::anyhow!("activation failed: {e}"))?;
            let id = StoredIdentity {
                worker_id,
                cert,
                ca_cert,
                key,
            };
            save_identity(&w.auth_storage_path, &id)?;
            info!(worker_id = %id.worker_id, "activated");
            id
        }
    };

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut config = WorkerConfig::new(
        identity.worker_id.clone(),
        listen,
        vec![
            tls::CertificateDer::from(identity.cert.clone()),
            tls::CertificateDer::from(identity.ca_cert.clone()),
        ],
        identity.key.clone(),
    );
    config.threads = w.threads;
    config.allow_plaintext = w.allow_plaintext;
    config.tcp_buffer = (w.tcp_buffer_bytes > 0).then_some(w.tcp_buffer_bytes);
    config.read_ahead_budget = w.read_ahead_budget_bytes;
    config.io_driver = io_driver;
    config.busy_poll = std::time::Duration::from_micros(busy_poll_us);
    // The keys the controller sent last (kept on disk), until its welcome brings the current
    // set: a worker restarted while the controller is away still admits tokens.
    let kept = load_keys(&w.auth_storage_path);
    if kept.is_empty() {
        info!("no token keys kept yet; tokens are admitted once the controller link is up");
    }
    let worker = Worker::start(config, sluice_dataplane::cluster::key_set(&kept), events_tx)
        .with_context(|| format!("while starting the worker on {listen}"))?;
    let local = worker.local_addr();
    let public = w.public_addr.clone().unwrap_or_else(|| local.to_string());
    let link = tokio::spawn(run_link(
        LinkConfig {
            upstreams: w.initial_upstreams.clone(),
            worker_id: identity.worker_id.clone(),
            cert: identity.cert.clone(),
            ca_cert: identity.ca_cert.clone(),
            key: identity.key.clone(),
            boot_id: rand::random::<u64>() | 1,
            address: public.clone(),
            tags: w.tags.clone(),
            on_keys: Some({
                let dir = w.auth_storage_path.clone();
                std::sync::Arc::new(move |keys: &[Vec<u8>]| {
                    let kept = serde_json::to_vec(keys).unwrap_or_default();
                    if let Err(e) = write_private(&dir, KEYS_FILE, &kept) {
                        tracing::warn!(error = %e, "could not keep the token keys on disk");
                    }
                })
            }),
        },
        worker.handle(),
        events_rx,
    ));
    println!(
        "==> Sluice worker configuration\n\n{}\n==> Sluice worker started! Log data will stream in below:",
        block(
            2,
            27,
            &[
                ("Worker ID", identity.worker_id.clone()),
                ("Name", w.name.clone()),
                ("Proxy Address", local.to_string()),
                ("Public Address", public),
                ("Upstreams", w.initial_upstreams.join(", ")),
            ]
        )
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    crate::dev::report_on_sigusr1()?;
    crate::dev::shutdown_signal()?.await;
    info!("shutting down");
    tokio::task::spawn_blocking(move || worker.shutdown()).await?;
    // Give the link a moment to deliver the closing events.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), link).await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
