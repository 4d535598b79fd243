//! Sessions: authorizing one (choosing a host and a worker, signing the token), listing,
//! reading and canceling, and applying what workers report.

use jiff::{SignedDuration, Timestamp};
use rand::seq::SliceRandom;
use sluice_proto::cluster::WorkerEvent;
use sluice_proto::AuthzToken;
use tracing::{info, warn};

use crate::controller::*;
use crate::domain::sessions;
use crate::domain::targets::project_allowed;
use crate::error::Error;
use crate::ids::new_id;
use crate::model::*;
use crate::store::{Table, Write};

/// Applies one worker event to the state; the write that stores what it changed, if anything.
pub(crate) fn event_write(st: &mut State, event: WorkerEvent) -> Option<Write> {
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

impl Controller {
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

    pub(crate) fn visible(p: &Principal, s: &Session) -> bool {
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
}
