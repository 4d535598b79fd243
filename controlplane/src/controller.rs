//! The controller: resources, sessions and tokens in memory, every change written through the
//! durable store before it is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_proto::{TerminationReason, TokenSigner};

use crate::domain::seed::{seed_dev, DevSeed};
use crate::domain::sessions;
use crate::error::Error;
use crate::model::*;
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
    pub(crate) auth_token_ttl_secs: std::sync::atomic::AtomicI64,
    pub(crate) logins: crate::domain::throttle::LoginThrottle,
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

pub(crate) fn load<T: DeserializeOwned>(
    store: &dyn Store,
    table: Table,
) -> anyhow::Result<Vec<(String, T)>> {
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

pub(crate) fn ms(at_ms: u64) -> Timestamp {
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
            logins: crate::domain::throttle::LoginThrottle::new(),
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

    /// A scope by id.
    pub fn scope(&self, id: &str) -> Option<Scope> {
        self.state().scopes.get(id).cloned()
    }
}

/// How long a terminated session stays readable (`sessions read`, `sessions list
/// -include-terminated`) before the sweep deletes it with its connections, as Boundary's
/// delete-terminated-sessions job does after an hour. Without it every session and every
/// connection ever made stayed in memory and in the store: about 1 KiB of memory per
/// connection, and a sweep that visits every session each second.
pub(crate) const TERMINATED_RETENTION: SignedDuration = SignedDuration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::seed::dev_ids;
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
