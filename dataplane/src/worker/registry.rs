//! The worker's session registry: admission, binding, counting and ending sessions.
//!
//! This is the only state the worker threads share. Its lock is taken when a session is
//! admitted, a connection opens or closes, or a session ends, never while bytes move.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_proto::cluster::WorkerEvent;
use sluice_proto::frames::NONCE_LEN;
use sluice_proto::{
    AuthzToken, ConnectionClosedReason, KeySet, Refusal, RefusalKind, SignedToken,
    TerminationReason, TokenError,
};
use tokio::sync::{mpsc, watch};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const EVENT_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

thread_local! {
    static WORKER_THREAD: Cell<bool> = const { Cell::new(false) };
    /// Events waiting to be sent, and whether a flush is scheduled.
    static BATCH: RefCell<(Vec<WorkerEvent>, bool)> = const { RefCell::new((Vec::new(), false)) };
}

/// Marks the calling thread as a worker runtime thread, whose events are batched.
pub(crate) fn mark_worker_thread() {
    WORKER_THREAD.with(|w| w.set(true));
}

fn flush_events(tx: &mpsc::UnboundedSender<WorkerEvent>) {
    let events = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.1 = false;
        std::mem::take(&mut b.0)
    });
    for e in events {
        let _ = tx.send(e);
    }
}

/// Shared by every worker thread.
pub(crate) struct Registry {
    worker_id: String,
    keys: RwLock<KeySet>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    inner: Mutex<Inner>,
    /// Proxied connections closed and sessions ended since start; the memory trimmer watches
    /// it.
    pub(crate) closed: Arc<AtomicU64>,
    /// Fixed buffer size for sockets to targets (`WorkerConfig::tcp_buffer`).
    pub(crate) tcp_buffer: Option<usize>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Arc<LiveSession>>,
    /// Sessions that ended (or were canceled before use), kept until their token expires so the
    /// token cannot start them again.
    ended: HashMap<String, (TerminationReason, u64)>,
    /// Live sessions by the exact bytes of their verified token: a data connection of the tls
    /// and tcp transports presents the token again, and bytes identical to a token already
    /// verified need no second signature check.
    by_token: HashMap<Box<[u8]>, Arc<LiveSession>>,
}

/// A session admitted on this worker.
pub(crate) struct LiveSession {
    pub claims: AuthzToken,
    token: Box<[u8]>,
    nonce: [u8; NONCE_LEN],
    counters: Mutex<Counters>,
    end_tx: watch::Sender<Option<TerminationReason>>,
    next_connection: AtomicU64,
    registry: Arc<Registry>,
    /// The endpoint's addresses, resolved once per session: a host name such as `localhost`
    /// would otherwise go through the blocking resolver pool on every connection.
    endpoint_addrs: tokio::sync::OnceCell<Vec<std::net::SocketAddr>>,
}

#[derive(Default)]
struct Counters {
    used: u32,
    open: u32,
    ended: Option<TerminationReason>,
    closed_reported: bool,
}

/// Whether a hello created the session or joined a live one.
pub(crate) enum Admitted {
    /// First client: the caller must arm the expiry timer.
    New(Arc<LiveSession>),
    /// The same client again (for example a second QUIC connection of one `connect`).
    Existing(Arc<LiveSession>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters that are still consistent enough to end
    // sessions; recover rather than cascade the panic through every thread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub fn new(
        worker_id: String,
        keys: KeySet,
        events: mpsc::UnboundedSender<WorkerEvent>,
    ) -> Self {
        Self {
            worker_id,
            keys: RwLock::new(keys),
            events,
            inner: Mutex::default(),
            closed: Arc::default(),
            tcp_buffer: None,
        }
    }

    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Reports an event to the controller. On a worker thread, events are batched and sent a
    /// few milliseconds later, off the connection's critical path: sending at once woke the
    /// controller (and its store) in the middle of every connection setup, which cost ~200 µs
    /// of setup latency on two cores (measured with and without).
    pub fn emit(&self, event: WorkerEvent) {
        let batched = WORKER_THREAD.with(Cell::get)
            && BATCH.with(|b| {
                let mut b = b.borrow_mut();
                b.0.push(event.clone());
                if !b.1 {
                    b.1 = true;
                    let tx = self.events.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(EVENT_BATCH_DELAY).await;
                        flush_events(&tx);
                    });
                }
                true
            });
        if !batched {
            // The receiver is gone only while the process shuts down; nothing to report to then.
            let _ = self.events.send(event);
        }
    }

    /// Sends this thread's batched events now (worker thread exit).
    pub fn flush(&self) {
        flush_events(&self.events);
    }

    /// Verifies a token and admits its session for the client holding `nonce`.
    pub fn admit(
        self: &Arc<Self>,
        token: &[u8],
        nonce: [u8; NONCE_LEN],
        now: u64,
    ) -> Result<Admitted, Refusal> {
        if let Some(s) = lock(&self.inner).by_token.get(token).cloned() {
            if now < s.claims.expires_at {
                return Self::rejoin(s, nonce);
            }
        }
        let signed = SignedToken::decode_binary(token).map_err(token_refusal)?;
        let claims = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            keys.verify(&signed, now, &self.worker_id)
                .map_err(token_refusal)?
        };
        let mut inner = lock(&self.inner);
        inner.ended.retain(|_, (_, expires)| *expires > now);
        if let Some((reason, _)) = inner.ended.get(&claims.session_id) {
            return Err(ended_refusal(&claims.session_id, *reason));
        }
        if let Some(s) = inner.live.get(&claims.session_id) {
            return Self::rejoin(s.clone(), nonce);
        }
        let (end_tx, _) = watch::channel(None);
        let session = Arc::new(LiveSession {
            nonce,
            counters: Mutex::default(),
            end_tx,
            next_connection: AtomicU64::new(1),
            registry: self.clone(),
            endpoint_addrs: tokio::sync::OnceCell::new(),
            token: token.into(),
            claims,
        });
        inner
            .live
            .insert(session.claims.session_id.clone(), session.clone());
        inner.by_token.insert(token.into(), session.clone());
        drop(inner);
        self.emit(WorkerEvent::SessionActivated {
            session_id: session.claims.session_id.clone(),
            at_ms: unix_ms(),
        });
        Ok(Admitted::New(session))
    }

    /// A client presenting the token of a live session: admitted only if it is the client the
    /// session is bound to.
    fn rejoin(s: Arc<LiveSession>, nonce: [u8; NONCE_LEN]) -> Result<Admitted, Refusal> {
        if s.nonce != nonce {
            return Err(Refusal::new(
                RefusalKind::AlreadyBound,
                format!(
                    "session {} is already in use by another client; a token works only from the \
                     `sluice connect` that first used it, so authorize a new session",
                    s.claims.session_id
                ),
            ));
        }
        Ok(Admitted::Existing(s))
    }

    /// Ends a session at the controller's request (cancel). A session this worker has not seen
    /// yet is remembered until `expires_at` so its token is refused if it arrives later.
    pub fn end_session(&self, session_id: &str, reason: TerminationReason, expires_at: u64) {
        let live = lock(&self.inner).live.get(session_id).cloned();
        match live {
            Some(s) => s.end(reason),
            None => {
                let mut inner = lock(&self.inner);
                inner
                    .ended
                    .entry(session_id.to_owned())
                    .or_insert((reason, expires_at));
                drop(inner);
                self.emit(WorkerEvent::SessionClosed {
                    session_id: session_id.to_owned(),
                    reason,
                    at_ms: unix_ms(),
                });
            }
        }
    }

    /// Ends every live session (worker shutdown).
    pub fn end_all(&self, reason: TerminationReason) {
        let live: Vec<_> = lock(&self.inner).live.values().cloned().collect();
        for s in live {
            s.end(reason);
        }
    }

    fn retire(&self, session: &LiveSession, reason: TerminationReason) {
        let mut inner = lock(&self.inner);
        inner.live.remove(&session.claims.session_id);
        inner.by_token.remove(&session.token);
        inner.ended.insert(
            session.claims.session_id.clone(),
            (reason, session.claims.expires_at),
        );
    }
}

fn token_refusal(e: TokenError) -> Refusal {
    let kind = match e {
        TokenError::Expired { .. } => RefusalKind::Expired,
        TokenError::WrongWorker { .. } => RefusalKind::WrongWorker,
        _ => RefusalKind::InvalidToken,
    };
    Refusal::new(kind, e.to_string())
}

fn ended_refusal(session_id: &str, reason: TerminationReason) -> Refusal {
    let kind = match reason {
        TerminationReason::Canceled => RefusalKind::Canceled,
        TerminationReason::TimedOut => RefusalKind::Expired,
        TerminationReason::ConnectionLimit => RefusalKind::ConnectionLimit,
        _ => RefusalKind::Terminated,
    };
    Refusal::new(
        kind,
        format!(
            "session {session_id} has ended ({}); authorize a new session",
            reason.as_str()
        ),
    )
}

/// An admitted proxied connection; report its end with [`LiveSession::close_connection`].
pub(crate) struct ConnectionTicket {
    pub id: String,
    pub connections_left: i32,
}

impl LiveSession {
    /// Connections the session can still open; -1 when unlimited. A client that joins a
    /// session again (a second QUIC connection of one `connect`) sees what is really left.
    pub fn connections_left(&self) -> i32 {
        let limit = self.claims.connection_limit;
        if limit < 0 {
            return -1;
        }
        (limit - lock(&self.counters).used as i32).max(0)
    }

    /// Counts a new connection against the limit.
    pub fn open_connection(&self) -> Result<ConnectionTicket, Refusal> {
        let mut c = lock(&self.counters);
        if let Some(reason) = c.ended {
            return Err(ended_refusal(&self.claims.session_id, reason));
        }
        let limit = self.claims.connection_limit;
        if limit >= 0 && c.used >= limit as u32 {
            return Err(Refusal::new(
                RefusalKind::ConnectionLimit,
                format!(
                    "session {} has used all {limit} of its connections; authorize a new session",
                    self.claims.session_id
                ),
            ));
        }
        c.used += 1;
        c.open += 1;
        let left = if limit < 0 { -1 } else { limit - c.used as i32 };
        let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionTicket {
            id: format!("sc_{}_{n}", self.claims.session_id.trim_start_matches("s_")),
            connections_left: left,
        })
    }

    /// Records that a connection closed, and ends the session when its limit is used up.
    pub fn close_connection(
        &self,
        ticket: &ConnectionTicket,
        bytes_up: u64,
        bytes_down: u64,
        reason: ConnectionClosedReason,
    ) {
        self.registry.emit(WorkerEvent::ConnectionClosed {
            session_id: self.claims.session_id.clone(),
            connection_id: ticket.id.clone(),
            bytes_up,
            bytes_down,
            reason,
            at_ms: unix_ms(),
        });
        self.release();
    }

    /// Gives back a connection that was counted but never reached its target. It still counts
    /// against the limit, as Boundary counts every authorized connection.
    pub fn abandon_connection(&self) {
        self.release();
    }

    fn release(&self) {
        self.registry.closed.fetch_add(1, Ordering::Relaxed);
        let mut c = lock(&self.counters);
        c.open = c.open.saturating_sub(1);
        let limit = self.claims.connection_limit;
        let used_up = limit >= 0 && c.used >= limit as u32;
        if c.open == 0 {
            if c.ended.is_none() && used_up {
                drop(c);
                self.end(TerminationReason::ConnectionLimit);
            } else if let Some(reason) = c.ended {
                self.report_closed(c, reason);
            }
        }
    }

    /// Ends the session: every connection of it closes and no new one is admitted. Idempotent;
    /// the first reason wins.
    pub fn end(&self, reason: TerminationReason) {
        let mut c = lock(&self.counters);
        if c.ended.is_some() {
            return;
        }
        c.ended = Some(reason);
        // The session's QUIC connection and its buffers go soon after: the trimmer returns them.
        self.registry.closed.fetch_add(1, Ordering::Relaxed);
        self.registry.retire(self, reason);
        self.end_tx.send_replace(Some(reason));
        if c.open == 0 {
            self.report_closed(c, reason);
        }
    }

    fn report_closed(&self, mut c: MutexGuard<'_, Counters>, reason: TerminationReason) {
        if c.closed_reported {
            return;
        }
        c.closed_reported = true;
        drop(c);
        self.registry.emit(WorkerEvent::SessionClosed {
            session_id: self.claims.session_id.clone(),
            reason,
            at_ms: unix_ms(),
        });
    }

    /// The reason the session ended, if it has.
    pub fn ended(&self) -> Option<TerminationReason> {
        lock(&self.counters).ended
    }

    /// Resolves when the session ends, with the reason.
    pub async fn wait_end(&self) -> TerminationReason {
        let mut rx = self.end_tx.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                return TerminationReason::SystemError;
            }
        }
    }

    /// Connects to the session's endpoint, trying each of its addresses in turn, and sends as
    /// much of `first` (the client's first bytes) as the new connection takes at once
    /// ([`crate::net::connect_tcp`]); returns the stream, the address it reached and
    /// how many bytes of `first` went. `near_receive`: the receive buffer of a near target whose
    /// bytes will be spliced on (`net::fit_buffers`).
    pub async fn dial(
        &self,
        first: &[u8],
        near_receive: Option<usize>,
    ) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr, usize)> {
        let addrs = self
            .endpoint_addrs
            .get_or_try_init(|| async {
                tokio::net::lookup_host(self.claims.endpoint.as_str())
                    .await
                    .map(Iterator::collect::<Vec<_>>)
            })
            .await?;
        let mut last = None;
        for a in addrs {
            match crate::net::connect_tcp(*a, self.registry.tcp_buffer, first, near_receive).await {
                Ok((s, sent)) => return Ok((s, *a, sent)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the endpoint resolved to no address",
            )
        }))
    }

    pub fn emit_opened(
        &self,
        ticket: &ConnectionTicket,
        client_addr: String,
        endpoint_addr: String,
    ) {
        self.registry.emit(WorkerEvent::ConnectionOpened {
            session_id: self.claims.session_id.clone(),
            connection_id: ticket.id.clone(),
            client_addr,
            endpoint_addr,
            at_ms: unix_ms(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::TokenSigner;

    fn token(signer: &TokenSigner, session: &str, expires_at: u64) -> Vec<u8> {
        let claims = AuthzToken {
            session_id: session.into(),
            target_id: "ttcp_1234567890".into(),
            user_id: "u_1234567890".into(),
            host_id: String::new(),
            endpoint: "127.0.0.1:9".into(),
            issued_at: 1_000,
            expires_at,
            connection_limit: 2,
            worker_id: "w_1".into(),
            worker_addr: "127.0.0.1:9202".into(),
            ca_fingerprint: [7; 32],
        };
        sluice_proto::token::text_to_binary(&signer.sign(&claims).unwrap()).unwrap()
    }

    fn registry(signer: &TokenSigner) -> (Arc<Registry>, mpsc::UnboundedReceiver<WorkerEvent>) {
        let mut keys = KeySet::default();
        keys.insert(signer.verifying_key());
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Registry::new("w_1".into(), keys, tx)), rx)
    }

    #[test]
    fn a_token_presented_again_joins_its_session_only_from_the_bound_client() {
        let signer = TokenSigner::from_seed(&[1; 32]);
        let (reg, _events) = registry(&signer);
        let t = token(&signer, "s_aaaaaaaaaa", 2_000);
        let first = reg.admit(&t, [1; NONCE_LEN], 1_500).unwrap();
        assert!(matches!(first, Admitted::New(_)));
        // Same bytes, same client: the live session, without a second signature check.
        assert!(matches!(
            reg.admit(&t, [1; NONCE_LEN], 1_500).unwrap(),
            Admitted::Existing(_)
        ));
        // Same bytes from another client: refused, cached or not.
        let other = reg.admit(&t, [2; NONCE_LEN], 1_500).err().unwrap();
        assert_eq!(other.kind, RefusalKind::AlreadyBound);
        // Past its expiry the cached session does not admit; the token is checked again.
        let late = reg.admit(&t, [1; NONCE_LEN], 2_000).err().unwrap();
        assert_eq!(late.kind, RefusalKind::Expired);
    }

    /// The memory trimmer runs after connections close and after sessions end (a QUIC
    /// connection's buffers go once its session has ended), once per session however it ends.
    #[test]
    fn closed_connections_and_ended_sessions_are_counted_for_the_trimmer() {
        let signer = TokenSigner::from_seed(&[1; 32]);
        let (reg, _events) = registry(&signer);
        let t = token(&signer, "s_cccccccccc", 2_000);
        let Admitted::New(s) = reg.admit(&t, [1; NONCE_LEN], 1_500).unwrap() else {
            panic!("first admission creates the session");
        };
        let ended = || reg.closed.load(Ordering::Relaxed);
        assert_eq!(ended(), 0);
        let ticket = s.open_connection().unwrap();
        s.close_connection(&ticket, 1, 1, ConnectionClosedReason::ClosedByEndUser);
        assert_eq!(ended(), 1, "a closed connection");
        s.end(TerminationReason::Canceled);
        assert_eq!(ended(), 2, "an ended session");
        s.end(TerminationReason::TimedOut);
        assert_eq!(ended(), 2, "a session ends once");
    }

    #[test]
    fn an_ended_session_is_not_rejoined_through_the_cache() {
        let signer = TokenSigner::from_seed(&[1; 32]);
        let (reg, _events) = registry(&signer);
        let t = token(&signer, "s_bbbbbbbbbb", 2_000);
        let Admitted::New(s) = reg.admit(&t, [1; NONCE_LEN], 1_500).unwrap() else {
            panic!("first admission creates the session");
        };
        s.end(TerminationReason::Canceled);
        let again = reg.admit(&t, [1; NONCE_LEN], 1_500).err().unwrap();
        assert_eq!(again.kind, RefusalKind::Canceled);
    }

    #[test]
    fn a_token_altered_after_a_cached_admission_is_still_verified() {
        let signer = TokenSigner::from_seed(&[1; 32]);
        let (reg, _events) = registry(&signer);
        let t = token(&signer, "s_cccccccccc", 2_000);
        reg.admit(&t, [1; NONCE_LEN], 1_500).unwrap();
        let mut forged = t.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let r = reg.admit(&forged, [1; NONCE_LEN], 1_500).err().unwrap();
        assert_eq!(r.kind, RefusalKind::InvalidToken);
    }
}
