//! The controller: resources, sessions and tokens in memory, every change written through the
//! durable store before it is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jiff::{SignedDuration, Timestamp};
use rand::seq::SliceRandom;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_proto::cluster::WorkerEvent;
use sluice_proto::{AuthzToken, TerminationReason, TokenSigner};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::error::Error;
use crate::ids::{new_id, new_secret};
use crate::model::*;
use crate::sessions;
use crate::store::{Store, Table, Write};

/// How the controller reaches a worker.
pub trait WorkerLink: Send + Sync {
    /// Ends `session_id` on the worker now (cancel), remembering it until `expires_at`.
    fn cancel_session(&self, session_id: &str, expires_at: u64);
    /// Replaces the keys the worker verifies tokens with (Ed25519 public keys, 32 bytes each).
    fn set_keys(&self, keys: Vec<Vec<u8>>);
}

/// A worker tokens can be pinned to.
#[derive(Clone)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Name (matched by worker filters as `/name`).
    pub name: String,
    /// Tags (matched by worker filters as `/tags/<key>`).
    pub tags: BTreeMap<String, Vec<String>>,
    /// Address clients reach it at.
    pub addr: String,
    /// SHA-256 of the cluster CA its certificate chains to.
    pub ca_fingerprint: [u8; 32],
    /// The cluster link to it.
    pub link: Arc<dyn WorkerLink>,
}

/// A worker's link as the controller sees it.
#[derive(Clone)]
pub(crate) struct LinkState {
    pub info: WorkerInfo,
    /// Whether its link is up now.
    pub connected: bool,
    /// When the link last went up or down.
    pub since: Timestamp,
    /// Tells a link that has been replaced from the current one.
    pub generation: u64,
}

/// The values `sluice dev` generates (Boundary's fixed dev ids).
#[derive(Debug, Clone)]
pub struct DevSeed {
    pub login_name: String,
    pub password: String,
    pub unprivileged_login_name: String,
    pub unprivileged_password: String,
    pub host_address: String,
    pub target_default_port: u16,
    pub target_session_max_seconds: u32,
    pub target_session_connection_limit: i32,
}

impl Default for DevSeed {
    fn default() -> Self {
        Self {
            login_name: "admin".into(),
            password: "password".into(),
            unprivileged_login_name: "user".into(),
            unprivileged_password: "password".into(),
            host_address: "localhost".into(),
            target_default_port: 22,
            target_session_max_seconds: 28_800,
            target_session_connection_limit: -1,
        }
    }
}

/// Fixed ids of the dev resources.
pub mod dev_ids {
    pub const AUTH_METHOD: &str = "ampw_1234567890";
    pub const ADMIN_ACCOUNT: &str = "acctpw_1234567890";
    pub const USER_ACCOUNT: &str = "acctpw_0987654321";
    pub const ADMIN_USER: &str = "u_1234567890";
    pub const USER: &str = "u_0987654321";
    pub const ORG: &str = "o_1234567890";
    pub const PROJECT: &str = "p_1234567890";
    pub const HOST_CATALOG: &str = "hcst_1234567890";
    pub const HOST: &str = "hst_1234567890";
    pub const HOST_SET: &str = "hsst_1234567890";
    pub const TARGET: &str = "ttcp_1234567890";
    pub const TARGET_DIRECT: &str = "ttcp_0987654321";
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) scopes: BTreeMap<String, Scope>,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) accounts: BTreeMap<String, Account>,
    pub(crate) auth_tokens: HashMap<String, AuthToken>,
    pub(crate) catalogs: BTreeMap<String, HostCatalog>,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) host_sets: BTreeMap<String, HostSet>,
    pub(crate) targets: BTreeMap<String, Target>,
    pub(crate) sessions: HashMap<String, Session>,
    /// Each session's connections by id: where they sit in its `connections`. A worker's
    /// event finds its connection here. Scanning the list instead made every event cost as
    /// much as the connections the session ever had: around 34,000 connections through one
    /// session, that scan was about half of `sluice dev`'s CPU samples, and setup took 247
    /// µs against 206 (docs/design.md).
    pub(crate) connection_index: HashMap<String, HashMap<String, usize>>,
    pub(crate) workers: BTreeMap<String, Worker>,
}

impl State {
    /// Makes `s` (with its connections) the session stored under `id`.
    fn insert_session(&mut self, id: String, s: Session) {
        if !s.connections.is_empty() {
            let index = s
                .connections
                .iter()
                .enumerate()
                .map(|(i, c)| (c.connection_id.clone(), i))
                .collect();
            self.connection_index.insert(s.id.clone(), index);
        }
        self.sessions.insert(id, s);
    }
}

/// Who is calling the API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub auth_token_id: String,
}

/// The result of a successful password authentication.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token: AuthToken,
    /// The bearer token text; shown once, never stored.
    pub bearer: String,
}

/// The result of authorize-session.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub session: Session,
    /// Where the chosen worker takes clients.
    pub worker_addr: String,
    pub authorization_token: String,
    pub scope: Scope,
}

/// The controller.
pub struct Controller {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    pub(crate) signer: RwLock<TokenSigner>,
    /// Public keys of rotated-out signing keys, each with the unix second until which tokens
    /// it signed may still be presented.
    pub(crate) retired_keys: Mutex<Vec<([u8; 32], i64)>>,
    pub(crate) links: RwLock<HashMap<String, LinkState>>,
    pub(crate) ca: crate::pki::ClusterCa,
    /// When this process started: workers not heard from since are treated as down since then.
    pub(crate) started: Timestamp,
    pub(crate) next_generation: std::sync::atomic::AtomicU64,
    /// How long a new auth token lives, in seconds.
    auth_token_ttl_secs: std::sync::atomic::AtomicI64,
    pub(crate) logins: crate::throttle::LoginThrottle,
}

/// How long auth tokens live unless configured: 7 days, as Boundary's default.
pub const DEFAULT_AUTH_TOKEN_TTL: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model types serialize")
}

fn load<T: DeserializeOwned>(store: &dyn Store, table: Table) -> anyhow::Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for (k, v) in store.load(table)? {
        match serde_json::from_slice(&v) {
            Ok(t) => out.push((k, t)),
            Err(e) => anyhow::bail!("stored record {k} in {table:?} is unreadable: {e}"),
        }
    }
    Ok(out)
}

/// Lowercase hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Lowercase hex of the SHA-256 of `b`.
pub(crate) fn sha256_hex(b: impl AsRef<[u8]>) -> String {
    hex(&Sha256::digest(b.as_ref()))
}

pub(crate) fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

fn ms(at_ms: u64) -> Timestamp {
    Timestamp::from_millisecond(at_ms as i64).unwrap_or_else(|_| Timestamp::now())
}

impl Controller {
    /// Loads everything from `store`. With `seed`, creates (or refreshes) the dev resources.
    /// With `orphaned_by_restart`, sessions left active or canceling by a previous process
    /// (whose in-process worker died with it) are terminated with `system error`.
    pub fn open(
        store: Arc<dyn Store>,
        seed: Option<&DevSeed>,
        orphaned_by_restart: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let mut state = State::default();
        let mut signing_seed = None;
        let mut retired: Vec<([u8; 32], i64)> = Vec::new();
        let (mut ca_cert, mut ca_key) = (None, None);
        for (k, v) in store.load(Table::Meta)? {
            match k.as_str() {
                "token_signing_key" => signing_seed = <[u8; 32]>::try_from(v.as_slice()).ok(),
                "retired_signing_keys" => {
                    retired = serde_json::from_slice(&v).map_err(|e| {
                        anyhow::anyhow!("stored retired signing keys are unreadable: {e}")
                    })?
                }
                "cluster_ca_cert" => ca_cert = Some(v),
                "cluster_ca_key" => ca_key = Some(v),
                _ => {}
            }
        }
        let mut writes = Vec::new();
        let ca = match (ca_cert, ca_key) {
            (Some(cert), Some(key)) => crate::pki::ClusterCa::from_parts(cert, &key)
                .map_err(|e| anyhow::anyhow!("the stored cluster CA is unreadable: {e}"))?,
            _ => {
                let ca = crate::pki::ClusterCa::generate()?;
                writes.push(Write::Put(
                    Table::Meta,
                    "cluster_ca_cert".into(),
                    ca.cert().to_vec(),
                ));
                writes.push(Write::Put(
                    Table::Meta,
                    "cluster_ca_key".into(),
                    ca.key_pkcs8(),
                ));
                ca
            }
        };
        let signing_seed = match signing_seed {
            Some(s) => s,
            None => {
                let s: [u8; 32] = rand::random();
                writes.push(Write::Put(
                    Table::Meta,
                    "token_signing_key".into(),
                    s.to_vec(),
                ));
                s
            }
        };
        for (id, v) in load::<serde_json::Value>(&*store, Table::Resources)? {
            let kind = id.split('_').next().unwrap_or_default();
            let r = match kind {
                "o" | "p" | "global" => serde_json::from_value(v).map(|s| {
                    state.scopes.insert(id.clone(), s);
                }),
                "u" => serde_json::from_value(v).map(|u| {
                    state.users.insert(id.clone(), u);
                }),
                "acctpw" => serde_json::from_value(v).map(|a| {
                    state.accounts.insert(id.clone(), a);
                }),
                "hcst" => serde_json::from_value(v).map(|c| {
                    state.catalogs.insert(id.clone(), c);
                }),
                "hst" => serde_json::from_value(v).map(|h| {
                    state.hosts.insert(id.clone(), h);
                }),
                "hsst" => serde_json::from_value(v).map(|h| {
                    state.host_sets.insert(id.clone(), h);
                }),
                "ttcp" => serde_json::from_value(v).map(|t| {
                    state.targets.insert(id.clone(), t);
                }),
                "w" => serde_json::from_value(v).map(|w| {
                    state.workers.insert(id.clone(), w);
                }),
                _ => Ok(()),
            };
            r.map_err(|e| anyhow::anyhow!("stored resource {id} is unreadable: {e}"))?;
        }
        for (id, t) in load::<AuthToken>(&*store, Table::AuthTokens)? {
            state.auth_tokens.insert(id, t);
        }
        let now = Timestamp::now();
        let mut stored = load::<Session>(&*store, Table::Sessions)?;
        // Records written before connections had their own table carry them inline: move
        // them, in the same commit as the rest of startup's writes.
        for (_, s) in stored.iter().filter(|(_, s)| !s.connections.is_empty()) {
            writes
                .extend((0..s.connections.len()).filter_map(|i| sessions::connection_write(s, i)));
            writes.push(Write::Put(Table::Sessions, s.id.clone(), enc(s)));
        }
        let mut connections: HashMap<String, Vec<(String, Connection)>> = HashMap::new();
        for (key, c) in load::<Connection>(&*store, Table::Connections)? {
            let Some((session_id, _)) = key.split_once('/') else {
                anyhow::bail!("stored connection {key} has no session id in its key");
            };
            connections
                .entry(session_id.to_owned())
                .or_default()
                .push((key, c));
        }
        for (id, s) in &mut stored {
            if let Some(mut cs) = connections.remove(id.as_str()) {
                // Keys carry the zero-padded index: sorting them restores the opening order.
                cs.sort_by(|a, b| a.0.cmp(&b.0));
                s.connections.extend(cs.into_iter().map(|(_, c)| c));
            }
        }
        for (id, mut s) in stored {
            if orphaned_by_restart
                && matches!(s.status(), SessionStatus::Active | SessionStatus::Canceling)
            {
                sessions::end_orphaned(&mut s, TerminationReason::SystemError, now, &mut writes);
            }
            state.insert_session(id, s);
        }
        if let Some(seed) = seed {
            writes.extend(seed_dev(&mut state, seed, now));
        }
        let controller = Arc::new(Self {
            store,
            state: Mutex::new(state),
            signer: RwLock::new(TokenSigner::from_seed(&signing_seed)),
            retired_keys: Mutex::new(retired),
            links: RwLock::new(HashMap::new()),
            ca,
            started: now,
            next_generation: std::sync::atomic::AtomicU64::new(1),
            auth_token_ttl_secs: std::sync::atomic::AtomicI64::new(
                DEFAULT_AUTH_TOKEN_TTL.as_secs() as i64,
            ),
            logins: crate::throttle::LoginThrottle::new(),
        });
        if !writes.is_empty() {
            let (tx, rx) = std::sync::mpsc::channel();
            controller
                .store
                .commit(writes, Box::new(move |r| drop(tx.send(r))));
            rx.recv()
                .map_err(|_| anyhow::anyhow!("store closed during startup"))??;
        }
        Ok(controller)
    }

    /// Sets how long auth tokens issued from now on live (at least a second, at most ten
    /// years).
    pub fn set_auth_token_time_to_live(&self, ttl: std::time::Duration) {
        let secs = ttl.as_secs().clamp(1, 10 * 365 * 24 * 3600) as i64;
        self.auth_token_ttl_secs
            .store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The public key workers verify tokens with.
    pub fn verifying_key(&self) -> sluice_proto::token::VerifyingKey {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verifying_key()
    }

    /// Registers an in-process worker (dev) whose link is always up.
    pub fn add_worker(&self, worker: WorkerInfo) {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                worker.id.clone(),
                LinkState {
                    info: worker,
                    connected: true,
                    since: Timestamp::now(),
                    generation,
                },
            );
    }

    /// Sends `writes` to the store (in call order) and returns a future that resolves once
    /// they are durable.
    pub(crate) fn persist(
        &self,
        writes: Vec<Write>,
    ) -> impl std::future::Future<Output = Result<(), Error>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store
            .commit(writes, Box::new(move |r| drop(tx.send(r))));
        async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::store(format!("could not store the change: {e}"))),
                Err(_) => Err(Error::store("the store shut down")),
            }
        }
    }

    /// Whether `password` matches the Argon2 PHC string `hash`. At most a few checks run at
    /// once (the login throttle's slots); beyond them callers wait, then get 503.
    pub(crate) async fn verify_password(
        &self,
        hash: String,
        password: &str,
    ) -> Result<bool, Error> {
        let password = password.to_owned();
        let slot = self.logins.hash_slot().await?;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        drop(slot);
        Ok(ok)
    }

    /// Checks a login name and password against a password auth method and issues an auth token.
    pub async fn authenticate(
        self: &Arc<Self>,
        auth_method_id: &str,
        login_name: &str,
        password: &str,
    ) -> Result<Authenticated, Error> {
        if auth_method_id != dev_ids::AUTH_METHOD {
            return Err(Error::not_found(format!(
                "auth method {auth_method_id} not found"
            )));
        }
        self.logins.attempt(auth_method_id, login_name)?;
        let account = self
            .state()
            .accounts
            .values()
            .find(|a| a.auth_method_id == auth_method_id && a.login_name == login_name)
            .cloned();
        let failed = || {
            Error::unauthenticated(format!(
                "authentication failed: wrong login name or password for auth method {auth_method_id}"
            ))
        };
        // Hash even for an unknown login name, so timing does not reveal which names exist.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => DUMMY
                .get_or_init(|| hash_password("not a password"))
                .clone(),
        };
        let ok = self.verify_password(hash, password).await?;
        let account = match account {
            Some(a) if ok => a,
            _ => return Err(failed()),
        };
        self.logins.succeeded(auth_method_id, login_name);
        if !self.state().users.contains_key(&account.user_id) {
            return Err(Error::unauthenticated(format!(
                "account {} belongs to no user; an administrator must add it to one with `sluice users add-accounts`",
                account.id
            )));
        }
        let id = new_id("at");
        let secret = new_secret();
        let now = Timestamp::now();
        let token = AuthToken {
            id: id.clone(),
            user_id: account.user_id.clone(),
            account_id: account.id.clone(),
            auth_method_id: auth_method_id.to_owned(),
            secret_sha256: sha256_hex(&secret),
            created_time: now,
            expiration_time: now
                + SignedDuration::from_secs(
                    self.auth_token_ttl_secs
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
        };
        let done = {
            let mut st = self.state();
            st.auth_tokens.insert(id.clone(), token.clone());
            self.persist(vec![Write::Put(Table::AuthTokens, id.clone(), enc(&token))])
        };
        done.await?;
        info!(auth_token_id = %id, user_id = %token.user_id, "authenticated");
        Ok(Authenticated {
            bearer: format!("{id}_{secret}"),
            token,
        })
    }

    /// Resolves a bearer token to its user.
    pub fn principal(&self, bearer: Option<&str>) -> Result<Principal, Error> {
        let bearer = bearer.ok_or_else(|| {
            Error::unauthenticated(
                "no auth token: run `sluice authenticate password` first, or set SLUICE_TOKEN",
            )
        })?;
        let invalid = || {
            Error::unauthenticated(
                "the auth token is invalid or has expired: run `sluice authenticate password` again",
            )
        };
        // at_XXXXXXXXXX_secret
        let (id, secret) = bearer
            .get(..13)
            .zip(bearer.get(14..))
            .filter(|_| bearer.as_bytes().get(13) == Some(&b'_'))
            .ok_or_else(invalid)?;
        let st = self.state();
        let token = st.auth_tokens.get(id).ok_or_else(invalid)?;
        let given = sha256_hex(secret);
        if !bool::from(given.as_bytes().ct_eq(token.secret_sha256.as_bytes())) {
            return Err(invalid());
        }
        if token.expiration_time <= Timestamp::now() {
            return Err(invalid());
        }
        let user = st.users.get(&token.user_id).cloned().ok_or_else(invalid)?;
        Ok(Principal {
            user,
            auth_token_id: token.id.clone(),
        })
    }

    /// Targets of a project.
    pub fn list_targets(&self, p: &Principal, scope_id: &str) -> Result<Vec<Target>, Error> {
        let st = self.state();
        if !st.scopes.contains_key(scope_id) {
            return Err(Error::not_found(format!("scope {scope_id} not found")));
        }
        if !p.user.may_use_project(scope_id) {
            return Ok(vec![]);
        }
        Ok(st
            .targets
            .values()
            .filter(|t| t.scope_id == scope_id)
            .cloned()
            .collect())
    }

    /// One target.
    pub fn read_target(&self, p: &Principal, id: &str) -> Result<Target, Error> {
        let t = self
            .state()
            .targets
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("target {id} not found")))?;
        project_allowed(p, &t)?;
        Ok(t)
    }

    /// Updates a target's settings (admin only). A stale `version` is refused (409).
    pub async fn update_target(
        &self,
        p: &Principal,
        id: &str,
        u: crate::resources::TargetUpdate,
    ) -> Result<Target, Error> {
        crate::resources::require_admin(p, "change targets")?;
        let filter = match u.egress_worker_filter.as_deref() {
            Some("") => Some(None),
            Some(f) => {
                crate::filter::Filter::parse(f)
                    .map_err(|e| Error::invalid(format!("egress_worker_filter is invalid: {e}")))?;
                Some(Some(f.to_owned()))
            }
            None => None,
        };
        let (t, done) = {
            let mut st = self.state();
            let t = st
                .targets
                .get_mut(id)
                .ok_or_else(|| Error::not_found(format!("target {id} not found")))?;
            crate::resources::check_version(id, t.version, u.version)?;
            let mut n = t.clone();
            if let Some(v) = u.name {
                n.name = v;
            }
            if let Some(v) = u.description {
                n.description = v;
            }
            if let Some(v) = u.session_max_seconds {
                if v == 0 {
                    return Err(Error::invalid("session_max_seconds must be at least 1"));
                }
                n.session_max_seconds = v;
            }
            if let Some(v) = u.session_connection_limit {
                if v < -1 || v == 0 {
                    return Err(Error::invalid(
                        "session_connection_limit must be -1 (unlimited) or at least 1",
                    ));
                }
                n.session_connection_limit = v;
            }
            if let Some(f) = filter {
                n.egress_worker_filter = f;
            }
            if let Some(a) = u.attributes {
                if let Some(port) = a.default_port {
                    if port == 0 {
                        return Err(Error::invalid("default_port must be 1–65535"));
                    }
                    n.default_port = port;
                }
                if let Some(port) = a.default_client_port {
                    n.default_client_port = port;
                }
            }
            n.version += 1;
            n.updated_time = Timestamp::now();
            *t = n.clone();
            let done = self.persist(vec![Write::Put(Table::Resources, n.id.clone(), enc(&n))]);
            (n, done)
        };
        done.await?;
        info!(target_id = %id, version = t.version, "target updated");
        Ok(t)
    }

    /// A scope by id.
    pub fn scope(&self, id: &str) -> Option<Scope> {
        self.state().scopes.get(id).cloned()
    }

    /// Creates a pending session (durably) and signs its authorization token.
    pub async fn authorize_session(
        &self,
        p: &Principal,
        target_id: &str,
        host_id: Option<&str>,
    ) -> Result<Authorized, Error> {
        let now = Timestamp::now();
        let (session, scope, token, worker_addr, done) = {
            let mut st = self.state();
            let target = st
                .targets
                .get(target_id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("target {target_id} not found")))?;
            project_allowed(p, &target)?;
            let worker = self.pick_worker(&target)?;
            if target.default_port == 0 {
                return Err(Error::conflict(format!(
                    "target {target_id} has no default port; set one with `sluice targets update tcp -id {target_id} -default-port N`"
                )));
            }
            let (host_id, host_set_id, address) = match &target.address {
                Some(addr) => {
                    if let Some(h) = host_id {
                        return Err(Error::invalid(format!(
                            "target {target_id} has a direct address; -host-id {h} cannot be used with it"
                        )));
                    }
                    (String::new(), String::new(), addr.clone())
                }
                None => {
                    let mut candidates = Vec::new();
                    for hs in &target.host_source_ids {
                        if let Some(set) = st.host_sets.get(hs) {
                            for h in &set.host_ids {
                                if let Some(host) = st.hosts.get(h) {
                                    candidates.push((
                                        host.id.clone(),
                                        set.id.clone(),
                                        host.address.clone(),
                                    ));
                                }
                            }
                        }
                    }
                    let chosen = match host_id {
                        Some(h) => candidates.into_iter().find(|(id, _, _)| id == h).ok_or_else(|| {
                            Error::invalid(format!(
                                "host {h} is not in any host set of target {target_id}"
                            ))
                        })?,
                        None => candidates.choose(&mut rand::thread_rng()).cloned().ok_or_else(|| {
                            Error::conflict(format!(
                                "target {target_id} has no hosts to connect to; add a host set with hosts"
                            ))
                        })?,
                    };
                    chosen
                }
            };
            let scope = st
                .scopes
                .get(&target.scope_id)
                .cloned()
                .ok_or_else(|| Error::internal("target's scope is missing"))?;
            let endpoint_hostport = if address.contains(':') && !address.starts_with('[') {
                format!("[{address}]:{}", target.default_port)
            } else {
                format!("{address}:{}", target.default_port)
            };
            let mut session = Session {
                id: new_id("s"),
                target_id: target.id.clone(),
                scope_id: target.scope_id.clone(),
                user_id: p.user.id.clone(),
                host_id,
                host_set_id,
                auth_token_id: p.auth_token_id.clone(),
                endpoint: format!("tcp://{endpoint_hostport}"),
                worker_id: worker.id.clone(),
                connection_limit: target.session_connection_limit,
                created_time: now,
                updated_time: now,
                expiration_time: now + SignedDuration::from_secs(target.session_max_seconds.into()),
                version: 0,
                states: vec![],
                termination_reason: None,
                connections: vec![],
            };
            sessions::begin(&mut session, now);
            let claims = AuthzToken {
                session_id: session.id.clone(),
                target_id: session.target_id.clone(),
                user_id: session.user_id.clone(),
                host_id: session.host_id.clone(),
                endpoint: endpoint_hostport,
                issued_at: now.as_second() as u64,
                expires_at: session.expiration_time.as_second() as u64,
                connection_limit: session.connection_limit,
                worker_id: worker.id.clone(),
                worker_addr: worker.addr.clone(),
                ca_fingerprint: worker.ca_fingerprint,
            };
            let token = self
                .signer
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .sign(&claims)
                .map_err(|e| Error::invalid(format!("cannot issue a token: {e}")))?;
            st.sessions.insert(session.id.clone(), session.clone());
            let done = self.persist(vec![Write::Put(
                Table::Sessions,
                session.id.clone(),
                enc(&session),
            )]);
            (session, scope, token, worker.addr.clone(), done)
        };
        done.await?;
        info!(session_id = %session.id, target_id, user_id = %p.user.id, "session authorized");
        Ok(Authorized {
            session,
            worker_addr,
            authorization_token: token,
            scope,
        })
    }

    fn visible(p: &Principal, s: &Session) -> bool {
        p.user.admin || s.user_id == p.user.id
    }

    /// Sessions of a project, newest first; terminated ones only when asked.
    pub fn list_sessions(
        &self,
        p: &Principal,
        scope_id: &str,
        include_terminated: bool,
    ) -> Result<Vec<Session>, Error> {
        let st = self.state();
        if !st.scopes.contains_key(scope_id) {
            return Err(Error::not_found(format!("scope {scope_id} not found")));
        }
        let mut out: Vec<Session> = st
            .sessions
            .values()
            .filter(|s| s.scope_id == scope_id && Self::visible(p, s))
            .filter(|s| include_terminated || s.status() != SessionStatus::Terminated)
            .cloned()
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created_time));
        Ok(out)
    }

    /// One session.
    pub fn read_session(&self, p: &Principal, id: &str) -> Result<Session, Error> {
        let st = self.state();
        match st.sessions.get(id) {
            Some(s) if Self::visible(p, s) => Ok(s.clone()),
            Some(_) => Err(Error::forbidden(format!(
                "session {id} belongs to another user; you may only read your own sessions"
            ))),
            None => Err(Error::not_found(format!("session {id} not found"))),
        }
    }

    /// Cancels a session: canceling now, pushed to its worker, terminated once the worker has
    /// closed its connections. Idempotent.
    pub async fn cancel_session(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
    ) -> Result<Session, Error> {
        let now = Timestamp::now();
        let (session, done) = {
            let mut st = self.state();
            let s = match st.sessions.get_mut(id) {
                Some(s) if Self::visible(p, s) => s,
                Some(_) => {
                    return Err(Error::forbidden(format!(
                    "session {id} belongs to another user; you may only cancel your own sessions"
                )))
                }
                None => return Err(Error::not_found(format!("session {id} not found"))),
            };
            if let Some(v) = version {
                if v != s.version {
                    return Err(Error::stale_version(format!(
                        "session {id} is at version {}, not {v}; read it again and retry",
                        s.version
                    )));
                }
            }
            if matches!(
                s.status(),
                SessionStatus::Canceling | SessionStatus::Terminated
            ) {
                return Ok(s.clone());
            }
            sessions::transition(s, SessionStatus::Canceling, None, now)
                .map_err(|e| Error::internal(e.to_string()))?;
            let s = s.clone();
            let done = self.persist(vec![Write::Put(Table::Sessions, s.id.clone(), enc(&s))]);
            (s, done)
        };
        done.await?;
        info!(session_id = %id, "session canceling");
        let link = self
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session.worker_id)
            .filter(|l| l.connected)
            .map(|l| l.info.link.clone());
        match link {
            Some(link) => link.cancel_session(id, session.expiration_time.as_second() as u64),
            None => {
                warn!(session_id = %id, worker_id = %session.worker_id, "session's worker is not connected; cancel applies when it returns")
            }
        }
        Ok(session)
    }

    /// Applies a worker's event. Idempotent.
    pub async fn apply_event(&self, event: WorkerEvent) -> Result<(), Error> {
        self.apply_events(vec![event]).await
    }

    /// Applies a batch of a worker's events in order and stores what they changed in one
    /// durable commit, so a batch costs one fsync, not one per event. Idempotent.
    pub async fn apply_events(&self, events: Vec<WorkerEvent>) -> Result<(), Error> {
        let done = {
            let mut st = self.state();
            let writes: Vec<Write> = events
                .into_iter()
                .filter_map(|e| event_write(&mut st, e))
                .collect();
            if writes.is_empty() {
                return Ok(());
            }
            self.persist(writes)
        };
        done.await
    }

    /// Terminates sessions whose end the worker cannot report: pending past expiry (never
    /// used), and canceling or active ones the worker has not confirmed well past their time.
    pub async fn sweep(&self) -> Result<usize, Error> {
        let now = Timestamp::now();
        let grace = SignedDuration::from_secs(10);
        let done = {
            let mut st = self.state();
            let mut writes = Vec::new();
            for s in st.sessions.values_mut() {
                let ended = match s.status() {
                    SessionStatus::Pending if s.expiration_time <= now => {
                        sessions::terminate(s, TerminationReason::TimedOut, now)
                    }
                    SessionStatus::Active if s.expiration_time + grace <= now => {
                        sessions::terminate(s, TerminationReason::TimedOut, now)
                    }
                    SessionStatus::Canceling
                        if s.states
                            .first()
                            .is_some_and(|r| r.start_time + grace <= now) =>
                    {
                        sessions::terminate(s, TerminationReason::Canceled, now)
                    }
                    _ => false,
                };
                if ended {
                    writes.push(Write::Put(Table::Sessions, s.id.clone(), enc(&*s)));
                }
            }
            writes.extend(self.end_sessions_of_dead_workers(&mut st, now));
            writes.extend(delete_old_sessions(&mut st, now));
            writes.extend(delete_expired_tokens(&mut st, now));
            let n = writes.len();
            if n == 0 {
                return Ok(0);
            }
            (n, self.persist(writes))
        };
        done.1.await?;
        Ok(done.0)
    }
}

/// How long a terminated session stays readable (`sessions read`, `sessions list
/// -include-terminated`) before the sweep deletes it with its connections, as Boundary's
/// delete-terminated-sessions job does after an hour. Without it every session and every
/// connection ever made stayed in memory and in the store: about 1 KiB of memory per
/// connection, and a sweep that visits every session each second.
pub(crate) const TERMINATED_RETENTION: SignedDuration = SignedDuration::from_secs(3600);

/// At most this many sessions are deleted by one sweep (one commit), so that a backlog after
/// an upgrade does not hold the state for long; the next sweep, a second later, goes on.
const DELETE_PER_SWEEP: usize = 1_000;

/// Removes the sessions terminated longer ago than [`TERMINATED_RETENTION`] whose tokens have
/// also expired (until then a worker that restarts is told of the session's end, so the token
/// cannot start it again); the writes that delete them and their connections.
fn delete_old_sessions(st: &mut State, now: Timestamp) -> Vec<Write> {
    let old: Vec<String> = st
        .sessions
        .values()
        .filter(|s| {
            s.status() == SessionStatus::Terminated
                && s.expiration_time <= now
                && s.states
                    .first()
                    .is_some_and(|r| r.start_time + TERMINATED_RETENTION <= now)
        })
        .map(|s| s.id.clone())
        .take(DELETE_PER_SWEEP)
        .collect();
    let mut writes = Vec::new();
    let mut deleted = 0;
    for id in old {
        let Some(s) = st.sessions.remove(&id) else {
            continue;
        };
        st.connection_index.remove(&id);
        writes.extend(
            (0..s.connections.len())
                .map(|i| Write::Delete(Table::Connections, sessions::connection_key(&id, i))),
        );
        writes.push(Write::Delete(Table::Sessions, id));
        deleted += 1;
    }
    if deleted > 0 {
        info!(
            sessions = deleted,
            "deleted sessions terminated over an hour ago"
        );
    }
    writes
}

/// Removes auth tokens past their expiration (at most [`DELETE_PER_SWEEP`] at a time); the
/// writes that delete them. An expired token is refused exactly as one that does not exist
/// ("invalid or has expired"), so nothing a user sees changes; without this every
/// `authenticate` left a token in memory and in the store for good.
fn delete_expired_tokens(st: &mut State, now: Timestamp) -> Vec<Write> {
    let expired: Vec<String> = st
        .auth_tokens
        .iter()
        .filter(|(_, t)| t.expiration_time <= now)
        .map(|(id, _)| id.clone())
        .take(DELETE_PER_SWEEP)
        .collect();
    for id in &expired {
        st.auth_tokens.remove(id);
    }
    expired
        .into_iter()
        .map(|id| Write::Delete(Table::AuthTokens, id))
        .collect()
}

/// Applies one worker event to the state; the write that stores what it changed, if anything.
fn event_write(st: &mut State, event: WorkerEvent) -> Option<Write> {
    let Some(s) = st.sessions.get_mut(event.session_id()) else {
        warn!(
            session_id = event.session_id(),
            "event for an unknown session"
        );
        return None;
    };
    // Only what changed is written: a connection's event writes that connection's record,
    // not the session with every connection it ever had.
    let session_write = |s: &Session| Write::Put(Table::Sessions, s.id.clone(), enc(s));
    match event {
        WorkerEvent::SessionActivated { at_ms, .. } => (s.status() == SessionStatus::Pending
            && sessions::transition(s, SessionStatus::Active, None, ms(at_ms)).is_ok())
        .then(|| session_write(s)),
        WorkerEvent::ConnectionOpened {
            connection_id,
            client_addr,
            endpoint_addr,
            at_ms,
            ..
        } => {
            let index = st.connection_index.entry(s.id.clone()).or_default();
            // A replayed batch can carry an opening already applied.
            let std::collections::hash_map::Entry::Vacant(slot) = index.entry(connection_id) else {
                return None;
            };
            s.connections.push(Connection {
                connection_id: slot.key().clone(),
                client_tcp_address: client_addr,
                endpoint_tcp_address: endpoint_addr,
                bytes_up: 0,
                bytes_down: 0,
                status: "connected".into(),
                created_time: ms(at_ms),
                closed_time: None,
                closed_reason: None,
            });
            slot.insert(s.connections.len() - 1);
            sessions::connection_write(s, s.connections.len() - 1)
        }
        WorkerEvent::ConnectionClosed {
            connection_id,
            bytes_up,
            bytes_down,
            reason,
            at_ms,
            ..
        } => {
            let i = *st.connection_index.get(&s.id)?.get(&connection_id)?;
            match s.connections.get_mut(i) {
                Some(c) if c.status != "closed" => {
                    c.status = "closed".into();
                    c.bytes_up = bytes_up;
                    c.bytes_down = bytes_down;
                    c.closed_reason = Some(reason);
                    c.closed_time = Some(ms(at_ms));
                    sessions::connection_write(s, i)
                }
                _ => None,
            }
        }
        WorkerEvent::SessionClosed { reason, at_ms, .. } => {
            sessions::terminate(s, reason, ms(at_ms)).then(|| session_write(s))
        }
    }
}

/// Refuses a user the targets of projects it was not given.
fn project_allowed(p: &Principal, t: &Target) -> Result<(), Error> {
    confine(p, "target", &t.id, &t.scope_id)
}

/// Refuses a user anything in a project it was not given: `what` `id` lives in `project_id`.
pub(crate) fn confine(p: &Principal, what: &str, id: &str, project_id: &str) -> Result<(), Error> {
    if p.user.may_use_project(project_id) {
        return Ok(());
    }
    Err(Error::forbidden(format!(
        "{what} {id} is in project {project_id}, which user {} has not been given; an administrator can add it with `sluice users update -id {} -project-id {project_id}`",
        p.user.id, p.user.id
    )))
}

fn seed_dev(state: &mut State, seed: &DevSeed, now: Timestamp) -> Vec<Write> {
    use dev_ids::*;
    let mut writes = Vec::new();
    let mut put =
        |id: &str, v: Vec<u8>| writes.push(Write::Put(Table::Resources, id.to_owned(), v));
    let org = Scope {
        id: ORG.into(),
        kind: "org".into(),
        name: "Generated org scope".into(),
        description: "Provides an initial org scope in Sluice".into(),
        parent_scope_id: "global".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let project = Scope {
        id: PROJECT.into(),
        kind: "project".into(),
        name: "Generated project scope".into(),
        description: "Provides an initial project scope in Sluice".into(),
        parent_scope_id: ORG.into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    for s in [org, project] {
        put(&s.id, enc(&s));
        state.scopes.insert(s.id.clone(), s);
    }
    let people = [
        (
            ADMIN_USER,
            ADMIN_ACCOUNT,
            &seed.login_name,
            &seed.password,
            true,
        ),
        (
            USER,
            USER_ACCOUNT,
            &seed.unprivileged_login_name,
            &seed.unprivileged_password,
            false,
        ),
    ];
    for (user_id, account_id, login, password, admin) in people {
        let user = User {
            id: user_id.into(),
            scope_id: "global".into(),
            name: login.clone(),
            admin,
            description: String::new(),
            project_ids: vec![],
            version: 1,
        };
        // Keep the stored hash when the password is unchanged: hashing is deliberately slow.
        let keep = state.accounts.get(account_id).filter(|a| {
            a.login_name == *login
                && PasswordHash::new(&a.password_hash)
                    .map(|h| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
        });
        let account = match keep {
            Some(a) => a.clone(),
            None => Account {
                id: account_id.into(),
                auth_method_id: AUTH_METHOD.into(),
                login_name: login.clone(),
                password_hash: hash_password(password),
                user_id: user_id.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            },
        };
        put(&user.id, enc(&user));
        put(&account.id, enc(&account));
        state.users.insert(user.id.clone(), user);
        state.accounts.insert(account.id.clone(), account);
    }
    let catalog = HostCatalog {
        id: HOST_CATALOG.into(),
        scope_id: PROJECT.into(),
        name: "Generated host catalog".into(),
        description: "Provides an initial host catalog in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let host = Host {
        id: HOST.into(),
        catalog_id: HOST_CATALOG.into(),
        address: seed.host_address.clone(),
        name: "Generated host".into(),
        description: "Provides an initial host in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    let set = HostSet {
        id: HOST_SET.into(),
        catalog_id: HOST_CATALOG.into(),
        host_ids: vec![HOST.into()],
        name: "Generated host set".into(),
        description: "Provides an initial host set in Sluice".into(),
        version: 1,
        created_time: now,
        updated_time: now,
    };
    put(&catalog.id, enc(&catalog));
    put(&host.id, enc(&host));
    put(&set.id, enc(&set));
    state.catalogs.insert(catalog.id.clone(), catalog);
    state.hosts.insert(host.id.clone(), host);
    state.host_sets.insert(set.id.clone(), set);
    let target = |id: &str, name: &str, address: Option<String>, sources: Vec<String>| Target {
        id: id.into(),
        scope_id: PROJECT.into(),
        name: name.into(),
        description: String::new(),
        address,
        host_source_ids: sources,
        default_port: seed.target_default_port,
        default_client_port: 0,
        session_max_seconds: seed.target_session_max_seconds,
        session_connection_limit: seed.target_session_connection_limit,
        egress_worker_filter: None,
        version: 1,
        created_time: now,
        updated_time: now,
    };
    for t in [
        target(
            TARGET,
            "Generated target with a host source",
            None,
            vec![HOST_SET.into()],
        ),
        target(
            TARGET_DIRECT,
            "Generated target with a direct address",
            Some(seed.host_address.clone()),
            vec![],
        ),
    ] {
        let t = match state.targets.get(&t.id) {
            Some(old) => Target {
                created_time: old.created_time,
                version: old.version,
                egress_worker_filter: old.egress_worker_filter.clone(),
                ..t
            },
            None => t,
        };
        put(&t.id, enc(&t));
        state.targets.insert(t.id.clone(), t);
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::cluster::WorkerEvent;
    use sluice_proto::ConnectionClosedReason;

    struct NoLink;
    impl WorkerLink for NoLink {
        fn cancel_session(&self, _: &str, _: u64) {}
        fn set_keys(&self, _: Vec<Vec<u8>>) {}
    }

    fn open(path: &std::path::Path) -> Arc<Controller> {
        let store = Arc::new(crate::RedbStore::open(path).unwrap());
        let c = Controller::open(store, Some(&DevSeed::default()), false).unwrap();
        c.add_worker(WorkerInfo {
            id: "w_replaytest".into(),
            name: "w".into(),
            tags: BTreeMap::new(),
            addr: "127.0.0.1:1".into(),
            ca_fingerprint: [0; 32],
            link: Arc::new(NoLink),
        });
        c
    }

    /// A worker's report that connection `id` of session `sid` opened at `at_ms`.
    fn opened(sid: &str, id: &str, at_ms: u64) -> WorkerEvent {
        WorkerEvent::ConnectionOpened {
            session_id: sid.into(),
            connection_id: id.into(),
            client_addr: "127.0.0.1:5000".into(),
            endpoint_addr: "127.0.0.1:22".into(),
            at_ms,
        }
    }

    /// A worker's report that connection `id` of session `sid` closed after moving `up`
    /// and `down` bytes.
    fn closed(sid: &str, id: &str, (up, down): (u64, u64), at_ms: u64) -> WorkerEvent {
        WorkerEvent::ConnectionClosed {
            session_id: sid.into(),
            connection_id: id.into(),
            bytes_up: up,
            bytes_down: down,
            reason: ConnectionClosedReason::ClosedByEndUser,
            at_ms,
        }
    }

    /// A controller on `path`, the dev admin's principal, and a new session of the dev target.
    async fn with_session(path: &std::path::Path) -> (Arc<Controller>, Principal, String) {
        let c = open(path);
        let auth = c
            .authenticate(dev_ids::AUTH_METHOD, "admin", "password")
            .await
            .unwrap();
        let p = c.principal(Some(&auth.bearer)).unwrap();
        let sid = c
            .authorize_session(&p, dev_ids::TARGET, None)
            .await
            .unwrap()
            .session
            .id;
        (c, p, sid)
    }

    /// A worker replays every batch the controller did not acknowledge, so the same events
    /// can arrive twice and out of order: the stored session must come out as if each had
    /// arrived once.
    #[tokio::test(flavor = "current_thread")]
    async fn replayed_event_batches_change_nothing_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (c, p, sid) = with_session(&path).await;
        let first = [
            WorkerEvent::SessionActivated {
                session_id: sid.clone(),
                at_ms: 1_000,
            },
            opened(&sid, "c1", 1_001),
            closed(&sid, "c1", (10, 20), 1_002),
        ];
        let second = [opened(&sid, "c2", 1_003)];
        // The first batch in one commit (c1 opened and closed in it), then its events again
        // one by one after a "reconnect", then both, then the first once more.
        c.apply_events(first.to_vec()).await.unwrap();
        for e in first
            .iter()
            .chain(first.iter())
            .chain(second.iter())
            .chain(second.iter())
            .chain(first.iter())
        {
            c.apply_event(e.clone()).await.unwrap();
        }
        let check = |s: &Session| {
            assert_eq!(s.status(), SessionStatus::Active);
            assert_eq!(
                s.states.len(),
                2,
                "pending then active, once: {:?}",
                s.states
            );
            assert_eq!(s.connections.len(), 2, "{:?}", s.connections);
            let c1 = &s.connections[0];
            assert_eq!(
                (c1.connection_id.as_str(), c1.status.as_str()),
                ("c1", "closed")
            );
            assert_eq!((c1.bytes_up, c1.bytes_down), (10, 20));
            assert_eq!(s.connections[1].status, "connected");
        };
        check(&c.read_session(&p, &sid).unwrap());

        // A replayed close of the whole session ends it once.
        let closed = WorkerEvent::SessionClosed {
            session_id: sid.clone(),
            reason: TerminationReason::ClosedByEndUser,
            at_ms: 1_004,
        };
        c.apply_event(closed.clone()).await.unwrap();
        let once = c.read_session(&p, &sid).unwrap();
        c.apply_event(closed).await.unwrap();
        assert_eq!(c.read_session(&p, &sid).unwrap(), once);
        assert_eq!(once.status(), SessionStatus::Terminated);

        // What is stored is what was served.
        drop(c);
        let again = open(&path);
        assert_eq!(again.read_session(&p, &sid).unwrap(), once);
        let mut before = once.clone();
        before.states.remove(0);
        before.termination_reason = None;
        check(&before);
    }

    /// The sweep deletes a session, with its connections, once it has been terminated for
    /// over an hour and its token has expired; not before either, and nothing else.
    #[tokio::test(flavor = "current_thread")]
    async fn sessions_terminated_over_an_hour_ago_are_deleted_once_their_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (c, p, old) = with_session(&path).await;
        let authorize = || async {
            c.authorize_session(&p, dev_ids::TARGET, None)
                .await
                .unwrap()
                .session
                .id
        };
        let (still_valid, recent, active) =
            (authorize().await, authorize().await, authorize().await);
        let now_ms = Timestamp::now().as_millisecond() as u64;
        let two_hours_ago = now_ms - 2 * 3_600_000;
        let mut events = Vec::new();
        for (sid, ended_ms) in [
            (&old, Some(two_hours_ago)),
            (&still_valid, Some(two_hours_ago)),
            (&recent, Some(now_ms - 600_000)),
            (&active, None),
        ] {
            let at = ended_ms.unwrap_or(now_ms) - 1_000;
            events.push(WorkerEvent::SessionActivated {
                session_id: sid.clone(),
                at_ms: at,
            });
            for n in 0..3 {
                let id = format!("{sid}_c{n}");
                events.push(opened(sid, &id, at));
                events.push(closed(sid, &id, (1, 2), at));
            }
            if let Some(ended) = ended_ms {
                events.push(WorkerEvent::SessionClosed {
                    session_id: sid.clone(),
                    reason: TerminationReason::ClosedByEndUser,
                    at_ms: ended,
                });
            }
        }
        c.apply_events(events).await.unwrap();
        // Time passes for every token but one.
        {
            let mut st = c.state();
            for sid in [&old, &recent, &active] {
                st.sessions.get_mut(sid).unwrap().expiration_time =
                    Timestamp::now() - SignedDuration::from_secs(1);
            }
        }
        c.sweep().await.unwrap();

        let err = c.read_session(&p, &old).unwrap_err();
        assert!(err.message().contains("not found"), "{}", err.message());
        let listed: Vec<String> = c
            .list_sessions(&p, dev_ids::PROJECT, true)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert!(!listed.contains(&old), "{listed:?}");
        for sid in [&still_valid, &recent] {
            let s = c.read_session(&p, sid).unwrap();
            assert_eq!(s.status(), SessionStatus::Terminated);
            assert_eq!(s.connections.len(), 3);
            assert!(listed.contains(sid), "{listed:?}");
        }
        assert_eq!(
            c.read_session(&p, &active).unwrap().status(),
            SessionStatus::Active
        );
        // An event the worker replays for the deleted session changes nothing.
        c.apply_event(opened(&old, "late", now_ms)).await.unwrap();
        assert!(c.read_session(&p, &old).is_err());

        // Deleted from the store too, connections and all; the others are untouched.
        drop(c);
        let sessions = stored(&path, Table::Sessions);
        assert!(sessions.iter().all(|(k, _)| *k != old));
        let conns = stored(&path, Table::Connections);
        assert!(
            conns
                .iter()
                .all(|(k, _)| !k.starts_with(&format!("{old}/"))),
            "{conns:?}"
        );
        assert_eq!(conns.len(), 9, "three for each session kept: {conns:?}");
        let again = open(&path);
        assert!(again.read_session(&p, &old).is_err());
        for sid in [&still_valid, &recent, &active] {
            assert_eq!(again.read_session(&p, sid).unwrap().connections.len(), 3);
        }
    }

    /// The sweep deletes an expired auth token from memory and the store; a valid one stays,
    /// and the expired one is refused as before.
    #[tokio::test(flavor = "current_thread")]
    async fn expired_auth_tokens_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let c = open(&path);
        let old = c
            .authenticate(dev_ids::AUTH_METHOD, "admin", "password")
            .await
            .unwrap();
        let kept = c
            .authenticate(dev_ids::AUTH_METHOD, "admin", "password")
            .await
            .unwrap();
        c.state()
            .auth_tokens
            .get_mut(&old.token.id)
            .unwrap()
            .expiration_time = Timestamp::now() - SignedDuration::from_secs(1);
        c.sweep().await.unwrap();
        let err = c.principal(Some(&old.bearer)).unwrap_err();
        assert!(
            err.message().contains("invalid or has expired"),
            "{}",
            err.message()
        );
        let p = c.principal(Some(&kept.bearer)).unwrap();
        let ids: Vec<String> = c.list_auth_tokens(&p).into_iter().map(|t| t.id).collect();
        assert!(!ids.contains(&old.token.id), "{ids:?}");
        assert!(ids.contains(&kept.token.id), "{ids:?}");
        drop(c);
        let stored_ids: Vec<String> = stored(&path, Table::AuthTokens)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!stored_ids.contains(&old.token.id), "{stored_ids:?}");
        assert!(stored_ids.contains(&kept.token.id), "{stored_ids:?}");
    }

    fn stored(path: &std::path::Path, table: Table) -> Vec<(String, serde_json::Value)> {
        let store = crate::RedbStore::open(path).unwrap();
        let out = load::<serde_json::Value>(&store, table).unwrap();
        drop(store);
        out
    }

    /// A connection's event writes that connection's record alone; a session's connections
    /// come back in the order they opened, and records of the earlier layout (connections
    /// inside the session's record) are moved on load without losing any.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_stored_on_their_own_and_old_records_are_moved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (c, p, sid) = with_session(&path).await;
        // Twelve, so that index 10 and 11 must sort after 9; opened within one millisecond,
        // so their times cannot order them.
        let ids: Vec<String> = (0..12).map(|i| format!("c{}", 12 - i)).collect();
        for id in &ids {
            c.apply_event(opened(&sid, id, 5_000)).await.unwrap();
        }
        c.apply_event(closed(&sid, &ids[3], (7, 9), 5_001))
            .await
            .unwrap();
        let served = c.read_session(&p, &sid).unwrap();
        drop(c);

        let sessions = stored(&path, Table::Sessions);
        let (_, record) = sessions.iter().find(|(k, _)| *k == sid).unwrap();
        assert!(
            record.get("connections").is_none(),
            "the session's record carries its connections: {record}"
        );
        let conns = stored(&path, Table::Connections);
        assert_eq!(conns.len(), 12, "one record per connection");

        let again = open(&path);
        let back = again.read_session(&p, &sid).unwrap();
        assert_eq!(back, served, "what is stored is what was served");
        let order: Vec<&str> = back
            .connections
            .iter()
            .map(|c| c.connection_id.as_str())
            .collect();
        assert_eq!(order, ids, "connections come back in the order they opened");
        assert_eq!(back.connections[3].bytes_down, 9);
        drop(again);

        // The earlier layout: the connections inside the session's record, none on their own.
        let mut old = record.clone();
        old["connections"] = serde_json::to_value(&served.connections).unwrap();
        {
            let store = crate::RedbStore::open(&path).unwrap();
            let mut writes = vec![Write::Put(
                Table::Sessions,
                sid.clone(),
                serde_json::to_vec(&old).unwrap(),
            )];
            writes.extend(
                conns
                    .iter()
                    .map(|(k, _)| Write::Delete(Table::Connections, k.clone())),
            );
            let (tx, rx) = std::sync::mpsc::channel();
            store.commit(writes, Box::new(move |r| drop(tx.send(r))));
            rx.recv().unwrap().unwrap();
        }
        assert!(stored(&path, Table::Connections).is_empty());
        let migrated = open(&path);
        assert_eq!(migrated.read_session(&p, &sid).unwrap(), served);
        drop(migrated);
        assert_eq!(
            stored(&path, Table::Connections).len(),
            12,
            "moved to their table"
        );
        let sessions = stored(&path, Table::Sessions);
        let (_, record) = sessions.iter().find(|(k, _)| *k == sid).unwrap();
        assert!(record.get("connections").is_none(), "{record}");
        // Moved once: a second start reads the same and writes nothing twice.
        let twice = open(&path);
        assert_eq!(twice.read_session(&p, &sid).unwrap(), served);

        // Events after a restart find the connections loaded from the store: a replayed
        // opening adds nothing, and a close reaches the connection it names.
        twice
            .apply_events(vec![
                opened(&sid, &ids[0], 5_000),
                closed(&sid, &ids[7], (11, 13), 5_002),
            ])
            .await
            .unwrap();
        let after = twice.read_session(&p, &sid).unwrap();
        assert_eq!(after.connections.len(), 12, "{:?}", after.connections);
        let states: Vec<(&str, &str)> = after
            .connections
            .iter()
            .map(|c| (c.connection_id.as_str(), c.status.as_str()))
            .collect();
        let expected: Vec<(&str, &str)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    id.as_str(),
                    if i == 3 || i == 7 {
                        "closed"
                    } else {
                        "connected"
                    },
                )
            })
            .collect();
        assert_eq!(states, expected);
        assert_eq!(
            (
                after.connections[7].bytes_up,
                after.connections[7].bytes_down
            ),
            (11, 13)
        );
        drop(twice);
        assert_eq!(open(&path).read_session(&p, &sid).unwrap(), after);
    }
}
