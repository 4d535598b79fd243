//! `sluice dev`: controller, worker and store in one process, with Boundary's generated
//! resources and ids.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_controlplane::dev_ids;
use sluice_controlplane::pki::{generate_worker_identity, WorkerIdentity};
use sluice_controlplane::{Controller, DevSeed, RedbStore, WorkerInfo, WorkerLink};
use sluice_dataplane::{tls, Worker, WorkerConfig, WorkerHandle};
use tracing::info;

use crate::args::DevArgs;
use crate::output::block;

const DEV_WORKER_ID: &str = "w_1234567890";
/// Worker events applied in one commit at most (the networked link's batch limit).
const MAX_EVENT_BATCH: usize = 2_000;

struct DevLink(WorkerHandle);

impl WorkerLink for DevLink {
    fn cancel_session(&self, session_id: &str, expires_at: u64) {
        self.0.cancel_session(session_id, expires_at);
    }

    fn set_keys(&self, keys: Vec<Vec<u8>>) {
        self.0.set_keys(sluice_dataplane::cluster::key_set(&keys));
    }
}

fn load_or_create_identity(dir: &Path) -> anyhow::Result<WorkerIdentity> {
    use sluice_controlplane::private;
    use std::io::Write;
    let path = dir.join("worker-identity.json");
    if private::check_file(&path, "the worker identity")? {
        let bytes =
            std::fs::read(&path).with_context(|| format!("while reading {}", path.display()))?;
        return serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is unreadable; remove it to generate a new identity",
                path.display()
            )
        });
    }
    let id = generate_worker_identity(tls::WORKER_SERVER_NAME)
        .context("while generating the worker certificate")?;
    let mut f = private::create_new(&path, "the worker identity")?;
    f.write_all(&serde_json::to_vec(&id)?)?;
    f.sync_all()?;
    Ok(id)
}

pub(crate) fn init_logging() {
    init_logging_or("info,quinn=warn");
}

/// Logs to stderr at `SLUICE_LOG`, or at `default` when it is unset or invalid.
pub(crate) fn init_logging_or(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

pub async fn run(a: DevArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (_tmp, dir): (Option<tempfile::TempDir>, PathBuf) = match &a.data_dir {
        Some(d) => {
            sluice_controlplane::private::ensure_dir(d, "the data directory (-data-dir)")?;
            (None, d.clone())
        }
        None => {
            use std::os::unix::fs::PermissionsExt;
            let t = tempfile::Builder::new()
                .prefix("sluice-dev-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()
                .context("while creating a temporary data directory")?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let api_addr: SocketAddr = a
        .api_addr
        .parse()
        .with_context(|| format!("-api-addr {:?} is not an address:port", a.api_addr))?;
    let proxy_addr: SocketAddr = a
        .proxy_addr
        .parse()
        .with_context(|| format!("-proxy-addr {:?} is not an address:port", a.proxy_addr))?;
    if a.host_address.contains(':')
        && !a.host_address.starts_with('[')
        && a.host_address.parse::<std::net::Ipv6Addr>().is_err()
    {
        anyhow::bail!(
            "-host-address {:?} must not include a port; use -target-default-port",
            a.host_address
        );
    }
    let seed = DevSeed {
        login_name: a.login_name.clone(),
        password: a.password.clone(),
        host_address: a.host_address.clone(),
        target_default_port: a.target_default_port,
        target_session_max_seconds: a.target_session_max_seconds,
        target_session_connection_limit: a.target_session_connection_limit,
        ..DevSeed::default()
    };
    let store = Arc::new(RedbStore::open(&dir.join("sluice.redb"))?);
    let controller = tokio::task::spawn_blocking({
        let store = store.clone();
        move || Controller::open(store, Some(&seed), true)
    })
    .await??;

    let identity = load_or_create_identity(&dir)?;
    let ca = rustls_der(&identity.ca_cert);
    let keys = sluice_dataplane::cluster::key_set(&controller.verifying_keys());
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut config = WorkerConfig::new(
        DEV_WORKER_ID.into(),
        proxy_addr,
        vec![rustls_der(&identity.cert), ca.clone()],
        identity.key.clone(),
    );
    config.threads = a.workers;
    config.allow_plaintext = a.worker_allow_plaintext;
    config.io_driver = a.io_driver;
    config.busy_poll = std::time::Duration::from_micros(a.busy_poll_us);
    let worker = Worker::start(config, keys, events_tx)
        .with_context(|| format!("while starting the worker on {proxy_addr}"))?;
    let worker_addr = worker.local_addr();
    controller.add_worker(WorkerInfo {
        id: DEV_WORKER_ID.into(),
        name: "dev-worker".into(),
        tags: [("type".to_owned(), vec!["dev".to_owned()])].into(),
        addr: worker_addr.to_string(),
        ca_fingerprint: tls::fingerprint(&ca),
        link: Arc::new(DevLink(worker.handle())),
    });

    let events_controller = controller.clone();
    let (stop_events, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Events are applied in batches, one durable commit each, as the networked cluster link
    // does: whatever the worker has reported by the time the last commit is done goes into the
    // next. Applied one by one, each awaited its own commit: two per proxied connection.
    let events = tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            let ev = tokio::select! {
                biased;
                ev = events_rx.recv() => ev,
                _ = &mut stop_rx => {
                    // The worker has stopped: everything it will report is queued.
                    while let Ok(ev) = events_rx.try_recv() {
                        batch.push(ev);
                    }
                    apply_worker_events(&events_controller, std::mem::take(&mut batch)).await;
                    return;
                }
            };
            let Some(ev) = ev else { return };
            batch.push(ev);
            while batch.len() < MAX_EVENT_BATCH {
                match events_rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            apply_worker_events(&events_controller, std::mem::take(&mut batch)).await;
        }
    });
    let sweeper = spawn_sweeper(controller.clone());

    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("while listening for the API on {api_addr}"))?;
    let api_local = listener.local_addr()?;

    print!(
        "==> Sluice dev initial configuration\n\n{}\n{}\n{}\n",
        block(2, 27, &[("Auth Method ID", dev_ids::AUTH_METHOD.into())]),
        block(
            2,
            27,
            &[
                ("Login Name", a.login_name.clone()),
                ("Password", a.password.clone()),
                ("Unprivileged Login Name", "user".into()),
                ("Unprivileged Password", "password".into()),
                ("Admin User ID", dev_ids::ADMIN_USER.into()),
                ("Unprivileged User ID", dev_ids::USER.into()),
                ("Org Scope ID", dev_ids::ORG.into()),
                ("Project Scope ID", dev_ids::PROJECT.into()),
                ("Host Catalog ID", dev_ids::HOST_CATALOG.into()),
                ("Host ID", dev_ids::HOST.into()),
                ("Host Set ID", dev_ids::HOST_SET.into()),
                ("Target ID", dev_ids::TARGET.into()),
                ("Direct Target ID", dev_ids::TARGET_DIRECT.into()),
                ("Host Address", a.host_address.clone()),
                ("Target Default Port", a.target_default_port.to_string()),
            ]
        ),
        block(
            2,
            27,
            &[
                ("API Address", format!("http://{api_local}")),
                ("Worker Proxy Address", worker_addr.to_string()),
                ("Worker ID", DEV_WORKER_ID.into()),
                ("Data Directory", dir.display().to_string()),
            ]
        ),
    );
    println!("==> Sluice server started! Log data will stream in below:");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let shutdown = crate::dev::shutdown_signal()?;
    report_on_sigusr1()?;
    axum::serve(
        listener,
        sluice_controlplane::http::router(controller.clone()),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("while serving the API")?;

    info!("shutting down");
    sweeper.abort();
    // Ending the worker closes every live session (system error) and reports it; the events
    // task drains those reports into the store before the process exits.
    tokio::task::spawn_blocking(move || worker.shutdown()).await?;
    let _ = stop_events.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), events).await;
    drop(controller);
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// On each SIGUSR1, prints to stderr what this process's QUIC connections and relays are
/// doing (see `sluice_dataplane::diag`): where a connection that stopped moving holds its bytes.
pub(crate) fn report_on_sigusr1() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sig = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while sig.recv().await.is_some() {
            let mut out = String::new();
            for line in sluice_dataplane::diag::report() {
                out.push_str("sluice state: ");
                out.push_str(&line);
                out.push('\n');
            }
            eprint!("{out}");
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (the signal handlers are installed now, so a signal that
/// arrives before the future is awaited is not lost).
pub(crate) fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// Ends, every second, the sessions no worker will report on (expired, unconfirmed cancels,
/// workers gone).
pub(crate) fn spawn_sweeper(controller: Arc<Controller>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = controller.sweep().await {
                tracing::error!(error = %e, "session sweep failed");
            }
        }
    })
}

async fn apply_worker_events(
    controller: &Controller,
    events: Vec<sluice_proto::cluster::WorkerEvent>,
) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = controller.apply_events(events).await {
        tracing::error!(error = %e, "could not record a batch of worker events");
    }
}

fn rustls_der(der: &[u8]) -> tls::CertificateDer<'static> {
    tls::CertificateDer::from(der.to_vec())
}
