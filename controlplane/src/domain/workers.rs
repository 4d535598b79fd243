//! Workers as a fleet: registration (controller-led activation), their links, choosing one for
//! a session, and ending the sessions of a worker that died.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use sluice_proto::cluster::{ActivationToken, ToWorker};
use sluice_proto::TerminationReason;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::controller::{
    enc, hex, sha256_hex, Controller, LinkState, Principal, WorkerInfo, WorkerLink,
};
use crate::domain::filter::Filter;
use crate::domain::require_admin;
use crate::domain::sessions;
use crate::error::Error;
use crate::ids::new_id;
use crate::model::{SessionStatus, Target, Worker};
use crate::store::{Table, Write};

/// How long a worker's link may be down before its live sessions are ended with
/// `system error`: long enough for a controller restart or a brief network blip, short enough
/// that a dead worker's sessions end within 15 s (with the 1 s sweep).
pub const WORKER_GRACE: SignedDuration = SignedDuration::from_secs(8);

/// A worker as the API shows it: the record and its link.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub worker: Worker,
    /// Whether its link is up now.
    pub connected: bool,
    /// When it was last heard from.
    pub last_status_time: Option<Timestamp>,
    /// Sessions pinned to it that are pending, active or canceling.
    pub session_count: usize,
    /// Connections open on it now.
    pub active_connection_count: usize,
}

/// The network cluster link to one connected worker.
pub(crate) struct NetLink(pub tokio::sync::mpsc::UnboundedSender<ToWorker>);

impl WorkerLink for NetLink {
    fn cancel_session(&self, session_id: &str, expires_at: u64) {
        let _ = self.0.send(ToWorker::Cancel {
            session_id: session_id.to_owned(),
            expires_at,
        });
    }

    fn set_keys(&self, keys: Vec<Vec<u8>>) {
        let _ = self.0.send(ToWorker::Keys { keys });
    }
}

/// What a worker gets when its link comes up.
pub struct LinkAccepted {
    pub generation: u64,
    pub welcome: ToWorker,
}

impl Controller {
    /// The SHA-256 of the cluster CA certificate.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.ca.fingerprint()
    }

    /// DER of the cluster CA certificate.
    pub fn ca_cert(&self) -> Vec<u8> {
        self.ca.cert().to_vec()
    }

    /// A certificate (chain: leaf, CA) and PKCS#8 key for the controller's cluster listener.
    pub fn cluster_identity(&self) -> anyhow::Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let (cert, key) = self.ca.issue(crate::pki::CONTROLLER_SERVER_NAME)?;
        Ok((vec![cert, self.ca.cert().to_vec()], key))
    }

    /// A certificate (chain: leaf, CA) and key for the API, naming `names` (DNS names or IPs),
    /// signed by the cluster CA.
    pub fn api_identity(&self, names: &[String]) -> anyhow::Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let (cert, key) = self.ca.issue_for(names)?;
        Ok((vec![cert, self.ca.cert().to_vec()], key))
    }

    /// The keys workers verify tokens with: the current signing key and rotated-out keys whose
    /// tokens may not have expired yet.
    pub fn verifying_keys(&self) -> Vec<Vec<u8>> {
        let now = Timestamp::now().as_second();
        let mut keys = vec![self.verifying_key().to_bytes().to_vec()];
        for (k, until) in self
            .retired_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if *until > now {
                keys.push(k.to_vec());
            }
        }
        keys
    }

    /// Replaces the token-signing key (admin only). Tokens signed with the old key stay valid
    /// until the last of them expires; every worker gets the new key set at once.
    pub async fn rotate_keys(&self, p: &Principal) -> Result<(), Error> {
        require_admin(p, "rotate keys")?;
        let now = Timestamp::now();
        let seed: [u8; 32] = rand::random();
        let new = sluice_proto::TokenSigner::from_seed(&seed);
        let done = {
            // Hold the signer while the last valid time is computed, so no token is issued
            // with the old key after it.
            let mut signer = self.signer.write().unwrap_or_else(|p| p.into_inner());
            let st = self.state();
            let until = st
                .sessions
                .values()
                .filter(|s| s.status() != SessionStatus::Terminated)
                .map(|s| s.expiration_time.as_second())
                .max()
                .unwrap_or(0)
                .max(now.as_second());
            drop(st);
            let mut retired = self.retired_keys.lock().unwrap_or_else(|p| p.into_inner());
            retired.retain(|(_, u)| *u > now.as_second());
            retired.push((signer.verifying_key().to_bytes(), until));
            let writes = vec![
                Write::Put(Table::Meta, "token_signing_key".into(), seed.to_vec()),
                Write::Put(
                    Table::Meta,
                    "retired_signing_keys".into(),
                    serde_json::to_vec(&*retired).unwrap_or_default(),
                ),
            ];
            *signer = new;
            self.persist(writes)
        };
        done.await?;
        let keys = self.verifying_keys();
        for l in self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if l.connected {
                l.info.link.set_keys(keys.clone());
            }
        }
        info!(keys = keys.len(), "token-signing key rotated");
        Ok(())
    }

    /// Picks a live worker allowed by the target's filter, at random.
    pub(crate) fn pick_worker(&self, target: &Target) -> Result<WorkerInfo, Error> {
        use rand::seq::SliceRandom;
        let filter = match &target.egress_worker_filter {
            Some(f) => Some(Filter::parse(f).map_err(|e| {
                Error::internal(format!(
                    "target {}'s worker filter is invalid ({e}); fix it with `sluice targets update tcp`",
                    target.id
                ))
            })?),
            None => None,
        };
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        let candidates: Vec<&LinkState> = links
            .values()
            .filter(|l| l.connected)
            .filter(|l| {
                filter
                    .as_ref()
                    .is_none_or(|f| f.matches(&l.info.name, &l.info.tags))
            })
            .collect();
        match candidates.choose(&mut rand::thread_rng()) {
            Some(l) => Ok(l.info.clone()),
            None if links.values().any(|l| l.connected) => Err(Error::conflict(format!(
                "no connected worker matches target {}'s worker filter {:?}; start a worker with matching tags or change the filter",
                target.id,
                target.egress_worker_filter.as_deref().unwrap_or_default()
            ))),
            None => Err(Error::conflict(
                "no worker is connected to handle the session; start a worker (`sluice worker -config worker.toml`)",
            )),
        }
    }

    /// Registers a worker and returns its one-time activation token (shown once).
    pub async fn create_worker_controller_led(
        &self,
        p: &Principal,
        name: &str,
        description: &str,
    ) -> Result<(Worker, String), Error> {
        require_admin(p, "manage workers")?;
        if name.len() > 128 || description.len() > 1024 {
            return Err(Error::invalid(
                "a worker name is at most 128 characters and a description at most 1024",
            ));
        }
        let now = Timestamp::now();
        let secret: [u8; 32] = rand::random();
        let (worker, done) = {
            let mut st = self.state();
            if !name.is_empty() && st.workers.values().any(|w| w.name == name) {
                return Err(Error::conflict(format!(
                    "a worker named {name:?} already exists; pick another name or delete it first"
                )));
            }
            let worker = Worker {
                id: new_id("w"),
                scope_id: "global".into(),
                name: name.into(),
                description: description.into(),
                address: String::new(),
                config_tags: BTreeMap::new(),
                release_version: String::new(),
                created_time: now,
                updated_time: now,
                version: 1,
                activation_sha256: Some(sha256_hex(secret)),
                cert_sha256: None,
                boot_id: 0,
            };
            st.workers.insert(worker.id.clone(), worker.clone());
            let done = self.persist(vec![Write::Put(
                Table::Resources,
                worker.id.clone(),
                enc(&worker),
            )]);
            (worker, done)
        };
        done.await?;
        let token = ActivationToken {
            worker_id: worker.id.clone(),
            secret,
            ca_fingerprint: self.ca.fingerprint(),
        }
        .encode();
        info!(worker_id = %worker.id, "worker created; waiting for activation");
        Ok((worker, token))
    }

    fn view(&self, w: &Worker) -> WorkerView {
        let link = self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&w.id)
            .cloned();
        let st = self.state();
        let mut session_count = 0;
        let mut active_connection_count = 0;
        for s in st.sessions.values().filter(|s| s.worker_id == w.id) {
            if s.status() != SessionStatus::Terminated {
                session_count += 1;
                active_connection_count += s
                    .connections
                    .iter()
                    .filter(|c| c.status != "closed")
                    .count();
            }
        }
        WorkerView {
            worker: w.clone(),
            connected: link.as_ref().is_some_and(|l| l.connected),
            last_status_time: link.map(|l| l.since),
            session_count,
            active_connection_count,
        }
    }

    /// Every worker (records, and the in-process dev worker).
    pub fn list_workers(&self, p: &Principal) -> Result<Vec<WorkerView>, Error> {
        require_admin(p, "manage workers")?;
        let mut workers: Vec<Worker> = self.state().workers.values().cloned().collect();
        // The dev worker has no record; show it from its link.
        for l in self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if !workers.iter().any(|w| w.id == l.info.id) {
                workers.push(Worker {
                    id: l.info.id.clone(),
                    scope_id: "global".into(),
                    name: l.info.name.clone(),
                    description: "In-process dev worker".into(),
                    address: l.info.addr.clone(),
                    config_tags: l.info.tags.clone(),
                    release_version: env!("CARGO_PKG_VERSION").into(),
                    created_time: self.started,
                    updated_time: self.started,
                    version: 1,
                    activation_sha256: None,
                    cert_sha256: None,
                    boot_id: 0,
                });
            }
        }
        Ok(workers.iter().map(|w| self.view(w)).collect())
    }

    /// One worker.
    pub fn read_worker(&self, p: &Principal, id: &str) -> Result<WorkerView, Error> {
        self.list_workers(p)?
            .into_iter()
            .find(|v| v.worker.id == id)
            .ok_or_else(|| Error::not_found(format!("worker {id} not found")))
    }

    /// Deletes a worker: its certificate stops being accepted, its link is closed and its
    /// sessions are canceled.
    pub async fn delete_worker(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "manage workers")?;
        let now = Timestamp::now();
        let done = {
            let mut st = self.state();
            if st.workers.remove(id).is_none() {
                return Err(Error::not_found(format!(
                    "worker {id} not found (the dev worker cannot be deleted)"
                )));
            }
            let mut writes = vec![Write::Delete(Table::Resources, id.to_owned())];
            for s in st.sessions.values_mut().filter(|s| s.worker_id == id) {
                sessions::end_orphaned(s, TerminationReason::Canceled, now, &mut writes);
            }
            self.persist(writes)
        };
        done.await?;
        // Cancel everything on the worker before its link goes.
        if let Some(l) = self
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            let st = self.state();
            for s in st.sessions.values().filter(|s| s.worker_id == id) {
                l.info
                    .link
                    .cancel_session(&s.id, s.expiration_time.as_second() as u64);
            }
        }
        info!(worker_id = %id, "worker deleted");
        Ok(())
    }

    /// Redeems an activation token: signs the worker's public key and returns
    /// `(worker id, certificate DER)`. The token works once.
    pub async fn activate_worker(
        &self,
        token_text: &str,
        public_key: &[u8],
    ) -> Result<(String, Vec<u8>), String> {
        let token = ActivationToken::decode(token_text).map_err(|e| e.to_string())?;
        if token.ca_fingerprint != self.ca.fingerprint() {
            return Err("the activation token was issued by another cluster".into());
        }
        let now = Timestamp::now();
        let (id, cert, done) = {
            let mut st = self.state();
            let w = st
                .workers
                .get_mut(&token.worker_id)
                .ok_or("the activation token names no worker; create one with `sluice workers create controller-led`")?;
            let expected = w
                .activation_sha256
                .as_deref()
                .ok_or("this activation token was already used; create a new worker")?;
            let presented = sha256_hex(token.secret);
            if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
                return Err("the activation token is not valid".into());
            }
            let cert = self.ca.sign_worker(&w.id, public_key)?;
            w.activation_sha256 = None;
            w.cert_sha256 = Some(sha256_hex(&cert));
            w.updated_time = now;
            w.version += 1;
            let done = self.persist(vec![Write::Put(Table::Resources, w.id.clone(), enc(&*w))]);
            (w.id.clone(), cert, done)
        };
        done.await.map_err(|e| e.to_string())?;
        info!(worker_id = %id, "worker activated");
        Ok((id, cert))
    }

    /// A worker's link came up with the certificate whose SHA-256 is `cert_sha256`.
    #[allow(clippy::too_many_arguments)]
    pub async fn link_up(
        &self,
        worker_id: &str,
        cert_sha256: &[u8; 32],
        boot_id: u64,
        address: String,
        tags: BTreeMap<String, Vec<String>>,
        release_version: String,
        tx: tokio::sync::mpsc::UnboundedSender<ToWorker>,
    ) -> Result<LinkAccepted, String> {
        let now = Timestamp::now();
        let (name, cancels, done) = {
            let mut st = self.state();
            let w = st.workers.get_mut(worker_id).ok_or_else(|| {
                format!(
                    "worker {worker_id} is not registered (deleted?); create and activate it again"
                )
            })?;
            let known = w.cert_sha256.as_deref().unwrap_or_default();
            let presented = hex(cert_sha256);
            if known.is_empty() || !bool::from(presented.as_bytes().ct_eq(known.as_bytes())) {
                return Err(format!(
                    "the certificate presented is not the one issued to worker {worker_id}"
                ));
            }
            let restarted = w.boot_id != 0 && w.boot_id != boot_id;
            w.boot_id = boot_id;
            w.address = address.clone();
            w.config_tags = tags.clone();
            w.release_version = release_version;
            w.updated_time = now;
            let name = w.name.clone();
            let mut writes = vec![Write::Put(Table::Resources, w.id.clone(), enc(&*w))];
            let mut cancels = Vec::new();
            for s in st
                .sessions
                .values_mut()
                .filter(|s| s.worker_id == worker_id)
            {
                // The sessions of a previous run of the worker died with it.
                if restarted {
                    sessions::end_orphaned(s, TerminationReason::SystemError, now, &mut writes);
                }
                if matches!(
                    s.status(),
                    SessionStatus::Canceling | SessionStatus::Terminated
                ) && s.expiration_time > now
                {
                    cancels.push((s.id.clone(), s.expiration_time.as_second() as u64));
                }
            }
            (name, cancels, self.persist(writes))
        };
        done.await.map_err(|e| e.to_string())?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                worker_id.to_owned(),
                LinkState {
                    info: WorkerInfo {
                        id: worker_id.to_owned(),
                        name,
                        tags,
                        addr: address,
                        ca_fingerprint: self.ca.fingerprint(),
                        link: Arc::new(NetLink(tx)),
                    },
                    connected: true,
                    since: now,
                    generation,
                },
            );
        info!(worker_id, cancels = cancels.len(), "worker link up");
        Ok(LinkAccepted {
            generation,
            welcome: ToWorker::Welcome {
                keys: self.verifying_keys(),
                cancels,
                heartbeat_ms: 2_000,
            },
        })
    }

    /// The worker was heard from on link `generation`. False when that link is no longer the
    /// worker's current one (deleted, or replaced by a newer link): it should close.
    pub fn link_seen(&self, worker_id: &str, generation: u64) -> bool {
        match self
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(worker_id)
        {
            Some(l) if l.generation == generation => {
                l.since = Timestamp::now();
                true
            }
            _ => false,
        }
    }

    /// Link `generation` of a worker went down (a newer link of the same worker is left alone).
    pub fn link_down(&self, worker_id: &str, generation: u64) {
        if let Some(l) = self
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(worker_id)
        {
            if l.generation == generation {
                l.connected = false;
                l.since = Timestamp::now();
                warn!(worker_id, "worker link down");
            }
        }
    }

    /// Ends the sessions of workers whose link has been down longer than [`WORKER_GRACE`]
    /// (workers never heard from since this controller started count from its start).
    pub(crate) fn end_sessions_of_dead_workers(
        &self,
        st: &mut crate::controller::State,
        now: Timestamp,
    ) -> Vec<Write> {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        let dead = |worker_id: &str| match links.get(worker_id) {
            Some(l) => !l.connected && l.since + WORKER_GRACE <= now,
            None => self.started + WORKER_GRACE <= now,
        };
        let mut writes = Vec::new();
        for s in st.sessions.values_mut() {
            if matches!(s.status(), SessionStatus::Active | SessionStatus::Canceling)
                && dead(&s.worker_id)
                && sessions::end_orphaned(s, TerminationReason::SystemError, now, &mut writes)
            {
                warn!(session_id = %s.id, worker_id = %s.worker_id, "worker gone; session terminated");
            }
        }
        writes
    }
}
