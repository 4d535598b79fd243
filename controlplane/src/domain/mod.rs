//! The controller's operations, one room per resource. Each takes the caller as a
//! [`Principal`] and decides what it may see and do; nothing here knows HTTP (refusals are
//! [`crate::error::Error`]s). This module holds the rules they share.

pub mod accounts;
pub mod auth_tokens;
pub mod filter;
pub mod hosts;
pub mod logins;
pub mod scopes;
pub mod seed;
pub mod session_ops;
pub mod sessions;
pub mod sweep;
pub mod targets;
pub mod throttle;
pub mod users;
pub mod workers;

use jiff::Timestamp;

use crate::controller::*;
use crate::error::Error;
use crate::model::*;
use crate::store::{Table, Write};

/// How a list of ids changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChange {
    Add,
    Remove,
    Set,
}

pub(crate) fn require_admin(p: &Principal, what: &str) -> Result<(), Error> {
    if p.user.admin {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "only an administrator may {what}"
        )))
    }
}

pub(crate) fn check_version(id: &str, current: u32, given: Option<u32>) -> Result<(), Error> {
    match given {
        None => Err(Error::invalid(format!(
            "version is required; read {id} and pass its version (now {current})"
        ))),
        Some(v) if v != current => Err(Error::stale_version(format!(
            "{id} is at version {current}, not {v}; read it again and retry"
        ))),
        Some(_) => Ok(()),
    }
}

/// A host address: a name or IP, never with a port (the target supplies the port).
pub(crate) fn check_address(a: &str) -> Result<(), Error> {
    let a = a.trim();
    if a.is_empty() || a.len() > 255 {
        return Err(Error::invalid("an address must be 1–255 characters"));
    }
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if a.contains(':') || a.contains('/') || a.chars().any(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "address {a:?} must be a host name or IP address without a port; the target's default port is used"
        )));
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.len() > 128 {
        return Err(Error::invalid("a name is at most 128 characters"));
    }
    Ok(())
}

/// Revokes every auth token `pick` selects. Returns their ids and the writes that delete them.
pub(crate) fn revoke_tokens_where(
    st: &mut State,
    pick: impl Fn(&AuthToken) -> bool,
) -> (Vec<String>, Vec<Write>) {
    let mut ids = Vec::new();
    st.auth_tokens.retain(|id, t| {
        let revoke = pick(t);
        if revoke {
            ids.push(id.clone());
        }
        !revoke
    });
    let writes = ids
        .iter()
        .map(|id| Write::Delete(Table::AuthTokens, id.clone()))
        .collect();
    (ids, writes)
}

/// Cancels every session `pick` selects that is still pending or active. Returns the writes
/// and the cancels to push `(worker id, session id, expiry)`.
pub(crate) fn cancel_where(
    st: &mut State,
    now: Timestamp,
    pick: impl Fn(&Session) -> bool,
) -> (Vec<Write>, Vec<(String, String, u64)>) {
    let mut writes = Vec::new();
    let mut pushes = Vec::new();
    for s in st.sessions.values_mut().filter(|s| pick(s)) {
        if matches!(s.status(), SessionStatus::Pending | SessionStatus::Active)
            && sessions::transition(s, SessionStatus::Canceling, None, now).is_ok()
        {
            writes.push(Write::Put(Table::Sessions, s.id.clone(), enc(&*s)));
            pushes.push((
                s.worker_id.clone(),
                s.id.clone(),
                s.expiration_time.as_second() as u64,
            ));
        }
    }
    (writes, pushes)
}

pub(crate) fn apply_change(list: &mut Vec<String>, change: ListChange, ids: Vec<String>) {
    match change {
        ListChange::Add => {
            for i in ids {
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        ListChange::Remove => list.retain(|x| !ids.contains(x)),
        ListChange::Set => {
            list.clear();
            for i in ids {
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
    }
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

impl Controller {
    /// Tells workers about cancels made while deleting something.
    pub(crate) fn push_cancels(&self, pushes: Vec<(String, String, u64)>) {
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        for (worker, session, expires) in pushes {
            if let Some(l) = links.get(&worker).filter(|l| l.connected) {
                l.info.link.cancel_session(&session, expires);
            }
        }
    }
}
