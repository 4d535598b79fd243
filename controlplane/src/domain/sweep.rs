//! The sweep, every second: expiry, unconfirmed cancels, and deleting old sessions and tokens.

use jiff::{SignedDuration, Timestamp};
use sluice_proto::TerminationReason;
use tracing::info;

use crate::controller::*;
use crate::domain::sessions;
use crate::error::Error;
use crate::model::*;
use crate::store::{Table, Write};

/// At most this many sessions are deleted by one sweep (one commit), so that a backlog after
/// an upgrade does not hold the state for long; the next sweep, a second later, goes on.
pub(crate) const DELETE_PER_SWEEP: usize = 1_000;

/// Removes the sessions terminated longer ago than [`TERMINATED_RETENTION`] whose tokens have
/// also expired (until then a worker that restarts is told of the session's end, so the token
/// cannot start it again); the writes that delete them and their connections.
pub(crate) fn delete_old_sessions(st: &mut State, now: Timestamp) -> Vec<Write> {
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
pub(crate) fn delete_expired_tokens(st: &mut State, now: Timestamp) -> Vec<Write> {
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

impl Controller {
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
