//! The session state machine: the one place that moves a session between states.
//!
//! pending → active → canceling → terminated, and pending → canceling/terminated,
//! active → terminated. Each state appears at most once; every move bumps the version, closes
//! the previous history row and opens a new one; terminated records its reason.

use jiff::Timestamp;
use sluice_proto::{ConnectionClosedReason, TerminationReason};
use thiserror::Error;

use crate::controller::enc;
use crate::model::{Session, SessionState, SessionStatus};
use crate::store::{Table, Write};

/// A move the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("session {session_id} cannot move from {from} to {to}")]
pub struct InvalidTransition {
    pub session_id: String,
    pub from: &'static str,
    pub to: &'static str,
}

fn allowed(from: SessionStatus, to: SessionStatus) -> bool {
    use SessionStatus::*;
    matches!(
        (from, to),
        (Pending, Active)
            | (Pending, Canceling)
            | (Pending, Terminated)
            | (Active, Canceling)
            | (Active, Terminated)
            | (Canceling, Terminated)
    )
}

/// Starts a new session's history in `pending`.
pub fn begin(session: &mut Session, now: Timestamp) {
    session.states = vec![SessionState {
        status: SessionStatus::Pending,
        start_time: now,
        end_time: None,
    }];
    session.version = 1;
    session.updated_time = now;
}

/// Moves `session` to `to`. `reason` is recorded when `to` is terminated.
pub fn transition(
    session: &mut Session,
    to: SessionStatus,
    reason: Option<TerminationReason>,
    now: Timestamp,
) -> Result<(), InvalidTransition> {
    let from = session.status();
    if !allowed(from, to) {
        return Err(InvalidTransition {
            session_id: session.id.clone(),
            from: from.as_str(),
            to: to.as_str(),
        });
    }
    if let Some(current) = session.states.first_mut() {
        current.end_time = Some(now);
    }
    session.states.insert(
        0,
        SessionState {
            status: to,
            start_time: now,
            end_time: None,
        },
    );
    if to == SessionStatus::Terminated {
        session.termination_reason = Some(reason.unwrap_or(TerminationReason::Unknown));
    }
    session.version += 1;
    session.updated_time = now;
    Ok(())
}

/// Terminates a session for `reason` from whatever state it is in, unless it already is.
/// A canceling session always terminates as `canceled`, whatever the worker reports.
pub fn terminate(session: &mut Session, reason: TerminationReason, now: Timestamp) -> bool {
    let reason = match session.status() {
        SessionStatus::Terminated => return false,
        SessionStatus::Canceling => TerminationReason::Canceled,
        _ => reason,
    };
    transition(session, SessionStatus::Terminated, Some(reason), now).is_ok()
}

/// Where connection `index` of session `session_id` is stored: the index zero-padded, so a
/// session's connections load in the order they opened.
pub(crate) fn connection_key(session_id: &str, index: usize) -> String {
    format!("{session_id}/{index:010}")
}

/// The write that stores connection `index` of `s` (nothing if there is none).
pub(crate) fn connection_write(s: &Session, index: usize) -> Option<Write> {
    let c = s.connections.get(index)?;
    Some(Write::Put(
        Table::Connections,
        connection_key(&s.id, index),
        enc(c),
    ))
}

/// Terminates a live session whose worker cannot report any more, closing its open
/// connections with `system error` (`canceled` if that is the reason), and adds the writes
/// that store what changed. False if it had already ended.
pub(crate) fn end_orphaned(
    s: &mut Session,
    reason: TerminationReason,
    now: Timestamp,
    writes: &mut Vec<Write>,
) -> bool {
    if s.status() == SessionStatus::Terminated {
        return false;
    }
    let mut closed = Vec::new();
    for (i, c) in s.connections.iter_mut().enumerate() {
        if c.status != "closed" {
            c.status = "closed".into();
            c.closed_time = Some(now);
            c.closed_reason = Some(match reason {
                TerminationReason::Canceled => ConnectionClosedReason::Canceled,
                _ => ConnectionClosedReason::SystemError,
            });
            closed.push(i);
        }
    }
    writes.extend(closed.into_iter().filter_map(|i| connection_write(s, i)));
    let ended = terminate(s, reason, now);
    writes.push(Write::Put(Table::Sessions, s.id.clone(), enc(&*s)));
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut s = Session {
            id: "s_1".into(),
            target_id: "ttcp_1".into(),
            scope_id: "p_1".into(),
            user_id: "u_1".into(),
            host_id: String::new(),
            host_set_id: String::new(),
            auth_token_id: "at_1".into(),
            endpoint: "tcp://localhost:22".into(),
            worker_id: "w_1".into(),
            connection_limit: -1,
            created_time: now,
            updated_time: now,
            expiration_time: now,
            version: 0,
            states: vec![],
            termination_reason: None,
            connections: vec![],
        };
        begin(&mut s, now);
        s
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn a_full_lifecycle_keeps_history_newest_first_and_bumps_versions() {
        let mut s = session();
        transition(&mut s, SessionStatus::Active, None, at(1)).unwrap();
        transition(&mut s, SessionStatus::Canceling, None, at(2)).unwrap();
        assert!(terminate(&mut s, TerminationReason::ClosedByEndUser, at(3)));
        assert_eq!(s.version, 4);
        let statuses: Vec<_> = s.states.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                SessionStatus::Terminated,
                SessionStatus::Canceling,
                SessionStatus::Active,
                SessionStatus::Pending
            ]
        );
        assert_eq!(s.states[0].end_time, None);
        assert_eq!(s.states[1].end_time, Some(at(3)));
        assert_eq!(s.states[3].end_time, Some(at(1)));
        // Canceling wins over whatever the worker said.
        assert_eq!(s.termination_reason, Some(TerminationReason::Canceled));
        assert_eq!(s.updated_time, at(3));
    }

    #[test]
    fn no_state_is_entered_twice_and_terminated_is_final() {
        let mut s = session();
        assert!(transition(&mut s, SessionStatus::Pending, None, at(1)).is_err());
        transition(&mut s, SessionStatus::Active, None, at(1)).unwrap();
        assert!(transition(&mut s, SessionStatus::Active, None, at(2)).is_err());
        assert!(transition(&mut s, SessionStatus::Pending, None, at(2)).is_err());
        assert!(terminate(&mut s, TerminationReason::TimedOut, at(3)));
        assert!(!terminate(&mut s, TerminationReason::Canceled, at(4)));
        assert!(transition(&mut s, SessionStatus::Canceling, None, at(4)).is_err());
        assert_eq!(s.termination_reason, Some(TerminationReason::TimedOut));
        assert_eq!(s.version, 3);
    }

    #[test]
    fn a_pending_session_can_be_canceled_or_terminated_directly() {
        let mut s = session();
        transition(&mut s, SessionStatus::Canceling, None, at(1)).unwrap();
        let mut t = session();
        assert!(terminate(&mut t, TerminationReason::TimedOut, at(1)));
        assert_eq!(t.status(), SessionStatus::Terminated);
    }
}
