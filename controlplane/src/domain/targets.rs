//! Targets: create, list, read, update, delete, and their host sources.

use jiff::Timestamp;
use serde::Deserialize;
use tracing::info;

use crate::controller::*;
use crate::domain::*;
use crate::error::Error;
use crate::ids::new_id;
use crate::model::*;
use crate::store::{Table, Write};

/// A new tcp target.
/// The fields of a target update (`PATCH /v1/targets/{id}`); absent fields keep their value,
/// and an empty string clears the worker filter.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct TargetUpdate {
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub session_max_seconds: Option<u32>,
    #[serde(default)]
    pub session_connection_limit: Option<i32>,
    #[serde(default)]
    pub egress_worker_filter: Option<String>,
    #[serde(default)]
    pub attributes: Option<TargetAttributes>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct TargetAttributes {
    #[serde(default)]
    pub default_port: Option<u16>,
    #[serde(default)]
    pub default_client_port: Option<u16>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCreate {
    pub scope_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub session_max_seconds: Option<u32>,
    #[serde(default)]
    pub session_connection_limit: Option<i32>,
    #[serde(default)]
    pub egress_worker_filter: Option<String>,
    #[serde(default)]
    pub attributes: TargetAttributes,
}

/// Refuses a user the targets of projects it was not given.
pub(crate) fn project_allowed(p: &Principal, t: &Target) -> Result<(), Error> {
    confine(p, "target", &t.id, &t.scope_id)
}

impl Controller {
    /// Creates a tcp target (admin only).
    pub async fn create_target(&self, p: &Principal, c: TargetCreate) -> Result<Target, Error> {
        require_admin(p, "create targets")?;
        if c.kind.as_deref().is_some_and(|k| k != "tcp") {
            return Err(Error::invalid("only tcp targets exist"));
        }
        check_name(&c.name)?;
        if c.name.is_empty() {
            return Err(Error::invalid("a target needs a name (-name)"));
        }
        let port = c
            .attributes
            .default_port
            .ok_or_else(|| Error::invalid("a tcp target needs a default port (-default-port)"))?;
        if port == 0 {
            return Err(Error::invalid("default_port must be 1–65535"));
        }
        if let Some(a) = &c.address {
            check_address(a)?;
        }
        if let Some(f) = &c.egress_worker_filter {
            crate::domain::filter::Filter::parse(f)
                .map_err(|e| Error::invalid(format!("egress_worker_filter is invalid: {e}")))?;
        }
        let limit = c.session_connection_limit.unwrap_or(-1);
        if limit < -1 || limit == 0 {
            return Err(Error::invalid(
                "session_connection_limit must be -1 (unlimited) or at least 1",
            ));
        }
        let max = c.session_max_seconds.unwrap_or(28_800);
        if max == 0 {
            return Err(Error::invalid("session_max_seconds must be at least 1"));
        }
        let now = Timestamp::now();
        let (t, done) = {
            let mut st = self.state();
            match st.scopes.get(&c.scope_id) {
                Some(s) if s.kind == "project" => {}
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "targets live in a project scope; {} is not one",
                        c.scope_id
                    )))
                }
                None => return Err(Error::not_found(format!("scope {} not found", c.scope_id))),
            }
            if st
                .targets
                .values()
                .any(|t| t.scope_id == c.scope_id && t.name == c.name)
            {
                return Err(Error::conflict(format!(
                    "a target named {:?} already exists in {}",
                    c.name, c.scope_id
                )));
            }
            let t = Target {
                id: new_id("ttcp"),
                scope_id: c.scope_id,
                name: c.name,
                description: c.description,
                address: c.address.map(|a| a.trim().to_owned()),
                host_source_ids: vec![],
                default_port: port,
                default_client_port: c.attributes.default_client_port.unwrap_or(0),
                session_max_seconds: max,
                session_connection_limit: limit,
                egress_worker_filter: c.egress_worker_filter.filter(|f| !f.is_empty()),
                version: 1,
                created_time: now,
                updated_time: now,
            };
            st.targets.insert(t.id.clone(), t.clone());
            let done = self.persist(vec![Write::Put(Table::Resources, t.id.clone(), enc(&t))]);
            (t, done)
        };
        done.await?;
        info!(target_id = %t.id, "target created");
        Ok(t)
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
        u: crate::domain::targets::TargetUpdate,
    ) -> Result<Target, Error> {
        crate::domain::require_admin(p, "change targets")?;
        let filter = match u.egress_worker_filter.as_deref() {
            Some("") => Some(None),
            Some(f) => {
                crate::domain::filter::Filter::parse(f)
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
            crate::domain::check_version(id, t.version, u.version)?;
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

    /// Deletes a target and cancels its sessions (admin only).
    pub async fn delete_target(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete targets")?;
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            if st.targets.remove(id).is_none() {
                return Err(Error::not_found(format!("target {id} not found")));
            }
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| s.target_id == id);
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        info!(target_id = %id, "target deleted");
        Ok(())
    }

    /// Adds, removes or replaces a target's host sources (host set ids).
    pub async fn change_host_sources(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        change: ListChange,
        ids: Vec<String>,
    ) -> Result<Target, Error> {
        require_admin(p, "change targets")?;
        let (t, done) = {
            let mut st = self.state();
            for hs in &ids {
                if !st.host_sets.contains_key(hs) {
                    return Err(Error::not_found(format!("host set {hs} not found")));
                }
            }
            let t = st
                .targets
                .get_mut(id)
                .ok_or_else(|| Error::not_found(format!("target {id} not found")))?;
            check_version(id, t.version, version)?;
            let mut n = t.clone();
            apply_change(&mut n.host_source_ids, change, ids);
            if n.address.is_some() && !n.host_source_ids.is_empty() {
                return Err(Error::invalid(format!(
                    "target {id} has a direct address; a target takes an address or host sources, never both"
                )));
            }
            n.version += 1;
            n.updated_time = Timestamp::now();
            *t = n.clone();
            let done = self.persist(vec![Write::Put(Table::Resources, n.id.clone(), enc(&n))]);
            (n, done)
        };
        done.await?;
        Ok(t)
    }
}
