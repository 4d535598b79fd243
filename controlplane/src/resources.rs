//! Creating, changing and deleting Boundary's resources around sessions: targets, static host
//! catalogs, hosts and host sets, and auth tokens (logout). Deleting something a session
//! depends on cancels that session, as Boundary does.

use jiff::Timestamp;
use serde::Deserialize;
use tracing::info;

use crate::controller::{confine, enc, Controller, Principal, State};
use crate::error::Error;
use crate::ids::new_id;
use crate::model::{AuthToken, Host, HostCatalog, HostSet, Session, SessionStatus, Target, User};
use crate::sessions;
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
fn check_address(a: &str) -> Result<(), Error> {
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
            crate::filter::Filter::parse(f)
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

    /// Creates a static host catalog in a project.
    pub async fn create_host_catalog(
        &self,
        p: &Principal,
        scope_id: &str,
        name: &str,
        description: &str,
    ) -> Result<HostCatalog, Error> {
        require_admin(p, "create host catalogs")?;
        check_name(name)?;
        let now = Timestamp::now();
        let (c, done) = {
            let mut st = self.state();
            if st.scopes.get(scope_id).is_none_or(|s| s.kind != "project") {
                return Err(Error::not_found(format!(
                    "project scope {scope_id} not found"
                )));
            }
            let c = HostCatalog {
                id: new_id("hcst"),
                scope_id: scope_id.into(),
                name: name.into(),
                description: description.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            };
            st.catalogs.insert(c.id.clone(), c.clone());
            (
                c.clone(),
                self.persist(vec![Write::Put(Table::Resources, c.id.clone(), enc(&c))]),
            )
        };
        done.await?;
        Ok(c)
    }

    /// Host catalogs of a project; none of a project the caller was not given.
    pub fn list_host_catalogs(&self, p: &Principal, scope_id: &str) -> Vec<HostCatalog> {
        if !p.user.may_use_project(scope_id) {
            return vec![];
        }
        self.state()
            .catalogs
            .values()
            .filter(|c| c.scope_id == scope_id)
            .cloned()
            .collect()
    }

    /// One host catalog, of a project the caller was given.
    pub fn read_host_catalog(&self, p: &Principal, id: &str) -> Result<HostCatalog, Error> {
        let c = self
            .state()
            .catalogs
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("host catalog {id} not found")))?;
        confine(p, "host catalog", id, &c.scope_id)?;
        Ok(c)
    }

    /// The project of host catalog `catalog_id`, if it exists.
    fn catalog_project(&self, catalog_id: &str) -> Option<String> {
        self.state()
            .catalogs
            .get(catalog_id)
            .map(|c| c.scope_id.clone())
    }

    /// Whether the caller may see what is in host catalog `catalog_id`.
    fn may_see_catalog(&self, p: &Principal, catalog_id: &str) -> bool {
        self.catalog_project(catalog_id)
            .is_some_and(|project| p.user.may_use_project(&project))
    }

    /// Deletes a host catalog with its hosts and host sets; sessions to its hosts are canceled.
    pub async fn delete_host_catalog(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete host catalogs")?;
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            if st.catalogs.remove(id).is_none() {
                return Err(Error::not_found(format!("host catalog {id} not found")));
            }
            let hosts: Vec<String> = st
                .hosts
                .values()
                .filter(|h| h.catalog_id == id)
                .map(|h| h.id.clone())
                .collect();
            let sets: Vec<String> = st
                .host_sets
                .values()
                .filter(|h| h.catalog_id == id)
                .map(|h| h.id.clone())
                .collect();
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| hosts.contains(&s.host_id));
            for h in &hosts {
                st.hosts.remove(h);
                writes.push(Write::Delete(Table::Resources, h.clone()));
            }
            for hs in &sets {
                st.host_sets.remove(hs);
                writes.push(Write::Delete(Table::Resources, hs.clone()));
            }
            writes.extend(drop_host_sources(&mut st, &sets, now));
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        Ok(())
    }

    /// Creates a static host.
    pub async fn create_host(
        &self,
        p: &Principal,
        catalog_id: &str,
        address: &str,
        name: &str,
        description: &str,
    ) -> Result<Host, Error> {
        require_admin(p, "create hosts")?;
        check_address(address)?;
        check_name(name)?;
        let now = Timestamp::now();
        let (h, done) = {
            let mut st = self.state();
            if !st.catalogs.contains_key(catalog_id) {
                return Err(Error::not_found(format!(
                    "host catalog {catalog_id} not found"
                )));
            }
            let h = Host {
                id: new_id("hst"),
                catalog_id: catalog_id.into(),
                address: address.trim().into(),
                name: name.into(),
                description: description.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            };
            st.hosts.insert(h.id.clone(), h.clone());
            (
                h.clone(),
                self.persist(vec![Write::Put(Table::Resources, h.id.clone(), enc(&h))]),
            )
        };
        done.await?;
        Ok(h)
    }

    /// Hosts of a catalog; none of a project the caller was not given.
    pub fn list_hosts(&self, p: &Principal, catalog_id: &str) -> Vec<Host> {
        if !self.may_see_catalog(p, catalog_id) {
            return vec![];
        }
        self.state()
            .hosts
            .values()
            .filter(|h| h.catalog_id == catalog_id)
            .cloned()
            .collect()
    }

    /// One host, of a project the caller was given.
    pub fn read_host(&self, p: &Principal, id: &str) -> Result<Host, Error> {
        let h = self
            .state()
            .hosts
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("host {id} not found")))?;
        let project = self.catalog_project(&h.catalog_id).unwrap_or_default();
        confine(p, "host", id, &project)?;
        Ok(h)
    }

    /// Deletes a host: it leaves its host sets and its sessions are canceled.
    pub async fn delete_host(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete hosts")?;
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            if st.hosts.remove(id).is_none() {
                return Err(Error::not_found(format!("host {id} not found")));
            }
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| s.host_id == id);
            for set in st.host_sets.values_mut() {
                if set.host_ids.iter().any(|h| h == id) {
                    set.host_ids.retain(|h| h != id);
                    set.version += 1;
                    set.updated_time = now;
                    writes.push(Write::Put(Table::Resources, set.id.clone(), enc(&*set)));
                }
            }
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        Ok(())
    }

    /// Creates a static host set.
    pub async fn create_host_set(
        &self,
        p: &Principal,
        catalog_id: &str,
        name: &str,
        description: &str,
    ) -> Result<HostSet, Error> {
        require_admin(p, "create host sets")?;
        check_name(name)?;
        let now = Timestamp::now();
        let (h, done) = {
            let mut st = self.state();
            if !st.catalogs.contains_key(catalog_id) {
                return Err(Error::not_found(format!(
                    "host catalog {catalog_id} not found"
                )));
            }
            let h = HostSet {
                id: new_id("hsst"),
                catalog_id: catalog_id.into(),
                host_ids: vec![],
                name: name.into(),
                description: description.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            };
            st.host_sets.insert(h.id.clone(), h.clone());
            (
                h.clone(),
                self.persist(vec![Write::Put(Table::Resources, h.id.clone(), enc(&h))]),
            )
        };
        done.await?;
        Ok(h)
    }

    /// Host sets of a catalog; none of a project the caller was not given.
    pub fn list_host_sets(&self, p: &Principal, catalog_id: &str) -> Vec<HostSet> {
        if !self.may_see_catalog(p, catalog_id) {
            return vec![];
        }
        self.state()
            .host_sets
            .values()
            .filter(|h| h.catalog_id == catalog_id)
            .cloned()
            .collect()
    }

    /// One host set, of a project the caller was given.
    pub fn read_host_set(&self, p: &Principal, id: &str) -> Result<HostSet, Error> {
        let h = self
            .state()
            .host_sets
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("host set {id} not found")))?;
        let project = self.catalog_project(&h.catalog_id).unwrap_or_default();
        confine(p, "host set", id, &project)?;
        Ok(h)
    }

    /// Adds, removes or replaces the hosts of a host set (hosts of the same catalog).
    pub async fn change_set_hosts(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        change: ListChange,
        ids: Vec<String>,
    ) -> Result<HostSet, Error> {
        require_admin(p, "change host sets")?;
        let (h, done) = {
            let mut st = self.state();
            let catalog = st
                .host_sets
                .get(id)
                .map(|s| s.catalog_id.clone())
                .ok_or_else(|| Error::not_found(format!("host set {id} not found")))?;
            for h in &ids {
                match st.hosts.get(h) {
                    Some(host) if host.catalog_id == catalog => {}
                    Some(_) => {
                        return Err(Error::invalid(format!(
                            "host {h} is in another host catalog than host set {id}"
                        )))
                    }
                    None => return Err(Error::not_found(format!("host {h} not found"))),
                }
            }
            let set = st.host_sets.get_mut(id).expect("checked above");
            check_version(id, set.version, version)?;
            apply_change(&mut set.host_ids, change, ids);
            set.version += 1;
            set.updated_time = Timestamp::now();
            let h = set.clone();
            (
                h.clone(),
                self.persist(vec![Write::Put(Table::Resources, h.id.clone(), enc(&h))]),
            )
        };
        done.await?;
        Ok(h)
    }

    /// Deletes a host set: targets drop it as a source.
    pub async fn delete_host_set(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete host sets")?;
        let now = Timestamp::now();
        let done = {
            let mut st = self.state();
            if st.host_sets.remove(id).is_none() {
                return Err(Error::not_found(format!("host set {id} not found")));
            }
            let mut writes = drop_host_sources(&mut st, &[id.to_owned()], now);
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            self.persist(writes)
        };
        done.await
    }

    /// Auth tokens: every one for an administrator, your own otherwise. Expired ones are
    /// left out.
    pub fn list_auth_tokens(&self, p: &Principal) -> Vec<crate::model::AuthToken> {
        let now = Timestamp::now();
        let mut v: Vec<_> = self
            .state()
            .auth_tokens
            .values()
            .filter(|t| (p.user.admin || t.user_id == p.user.id) && t.expiration_time > now)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.created_time.cmp(&b.created_time).then(a.id.cmp(&b.id)));
        v
    }

    /// One auth token: yours, or any as an administrator.
    pub fn read_auth_token(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<crate::model::AuthToken, Error> {
        match self.state().auth_tokens.get(id) {
            Some(t) if t.user_id == p.user.id || p.user.admin => Ok(t.clone()),
            Some(_) => Err(Error::forbidden(format!(
                "auth token {id} belongs to another user"
            ))),
            None => Err(Error::not_found(format!("auth token {id} not found"))),
        }
    }

    /// Revokes an auth token (logout): yours, or any as an administrator. Its sessions are
    /// canceled.
    pub async fn delete_auth_token(&self, p: &Principal, id: &str) -> Result<(), Error> {
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            match st.auth_tokens.get(id) {
                Some(t) if t.user_id == p.user.id || p.user.admin => {}
                Some(_) => {
                    return Err(Error::forbidden(format!(
                        "auth token {id} belongs to another user"
                    )))
                }
                None => return Err(Error::not_found(format!("auth token {id} not found"))),
            }
            st.auth_tokens.remove(id);
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| s.auth_token_id == id);
            writes.push(Write::Delete(Table::AuthTokens, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        info!(auth_token_id = %id, "auth token revoked");
        Ok(())
    }
}

impl Controller {
    /// Creates a user (admin only); `admin` gives it the admin role.
    pub async fn create_user(
        &self,
        p: &Principal,
        name: &str,
        description: &str,
        admin: bool,
        project_ids: Vec<String>,
    ) -> Result<User, Error> {
        require_admin(p, "create users")?;
        check_name(name)?;
        let (u, done) = {
            let mut st = self.state();
            check_projects(&st, &project_ids)?;
            if !name.is_empty() && st.users.values().any(|u| u.name == name) {
                return Err(Error::conflict(format!(
                    "a user named {name:?} already exists"
                )));
            }
            let u = User {
                id: new_id("u"),
                scope_id: "global".into(),
                name: name.into(),
                admin,
                description: description.into(),
                project_ids,
                version: 1,
            };
            st.users.insert(u.id.clone(), u.clone());
            (
                u.clone(),
                self.persist(vec![Write::Put(Table::Resources, u.id.clone(), enc(&u))]),
            )
        };
        done.await?;
        Ok(u)
    }

    /// Every user (admin), or yourself.
    pub fn list_users(&self, p: &Principal) -> Vec<User> {
        self.state()
            .users
            .values()
            .filter(|u| p.user.admin || u.id == p.user.id)
            .cloned()
            .collect()
    }

    /// One user: yourself, or anyone as an administrator.
    pub fn read_user(&self, p: &Principal, id: &str) -> Result<User, Error> {
        if !p.user.admin && id != p.user.id {
            return Err(Error::forbidden(format!(
                "you may only read your own user, not {id}"
            )));
        }
        self.state()
            .users
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("user {id} not found")))
    }

    /// Changes a user's name, description, role or projects (admin only); stale versions are
    /// refused.
    pub async fn update_user(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        change: UserChange,
    ) -> Result<User, Error> {
        let UserChange {
            name,
            description,
            admin,
            project_ids,
        } = change;
        require_admin(p, "change users")?;
        if admin == Some(false) && id == p.user.id {
            return Err(Error::invalid(
                "you cannot take the admin role from yourself; another administrator must",
            ));
        }
        let (u, done) = {
            let mut st = self.state();
            if let Some(ps) = &project_ids {
                check_projects(&st, ps)?;
            }
            let u = st
                .users
                .get_mut(id)
                .ok_or_else(|| Error::not_found(format!("user {id} not found")))?;
            check_version(id, u.version, version)?;
            if let Some(n) = name {
                check_name(&n)?;
                u.name = n;
            }
            if let Some(d) = description {
                u.description = d;
            }
            if let Some(a) = admin {
                u.admin = a;
            }
            if let Some(ps) = project_ids {
                u.project_ids = ps;
            }
            u.version += 1;
            let u = u.clone();
            (
                u.clone(),
                self.persist(vec![Write::Put(Table::Resources, u.id.clone(), enc(&u))]),
            )
        };
        done.await?;
        Ok(u)
    }

    /// Deletes a user: its auth tokens are revoked, its accounts left without a user and its
    /// sessions canceled (admin only).
    pub async fn delete_user(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete users")?;
        if id == p.user.id {
            return Err(Error::invalid("you cannot delete yourself"));
        }
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            if st.users.remove(id).is_none() {
                return Err(Error::not_found(format!("user {id} not found")));
            }
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| s.user_id == id);
            writes.extend(revoke_tokens_where(&mut st, |t| t.user_id == id).1);
            for a in st.accounts.values_mut().filter(|a| a.user_id == id) {
                a.user_id = String::new();
                a.version += 1;
                a.updated_time = now;
                writes.push(Write::Put(Table::Resources, a.id.clone(), enc(&*a)));
            }
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        info!(user_id = %id, "user deleted");
        Ok(())
    }

    /// Associates accounts with a user (admin only).
    pub async fn add_accounts(
        &self,
        p: &Principal,
        user_id: &str,
        version: Option<u32>,
        accounts: &[String],
    ) -> Result<User, Error> {
        require_admin(p, "change users")?;
        let (u, done) = {
            let mut st = self.state();
            let u = st
                .users
                .get(user_id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("user {user_id} not found")))?;
            check_version(user_id, u.version, version)?;
            // Check every account before changing any, so a refusal leaves all as they were.
            for id in accounts {
                let a = st
                    .accounts
                    .get(id)
                    .ok_or_else(|| Error::not_found(format!("account {id} not found")))?;
                if !a.user_id.is_empty() && a.user_id != user_id {
                    return Err(Error::conflict(format!(
                        "account {id} already belongs to user {}",
                        a.user_id
                    )));
                }
            }
            let now = Timestamp::now();
            let mut writes = Vec::new();
            for id in accounts {
                let a = st.accounts.get_mut(id).expect("checked above");
                if a.user_id != user_id {
                    a.user_id = user_id.into();
                    a.version += 1;
                    a.updated_time = now;
                    writes.push(Write::Put(Table::Resources, a.id.clone(), enc(&*a)));
                }
            }
            let u = st.users.get_mut(user_id).expect("checked above");
            u.version += 1;
            let u = u.clone();
            writes.push(Write::Put(Table::Resources, u.id.clone(), enc(&u)));
            (u, self.persist(writes))
        };
        done.await?;
        Ok(u)
    }
}

/// Fields of a host catalog, host or host set update; absent ones keep their value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostUpdate {
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub attributes: Option<HostUpdateAttributes>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostUpdateAttributes {
    #[serde(default)]
    pub address: Option<String>,
}

impl Controller {
    /// Changes a host catalog, host or host set by id (admin only); stale versions get 409.
    /// A host's new address applies to sessions authorized from then on.
    pub async fn update_host_resource(
        &self,
        p: &Principal,
        id: &str,
        u: HostUpdate,
    ) -> Result<serde_json::Value, Error> {
        require_admin(p, "change host resources")?;
        if let Some(n) = &u.name {
            check_name(n)?;
        }
        let address = u.attributes.and_then(|a| a.address);
        if let Some(a) = &address {
            check_address(a)?;
        }
        let now = Timestamp::now();
        macro_rules! apply {
            ($r:expr) => {{
                let r = $r;
                check_version(id, r.version, u.version)?;
                if let Some(n) = u.name {
                    r.name = n;
                }
                if let Some(d) = u.description {
                    r.description = d;
                }
                r.version += 1;
                r.updated_time = now;
            }};
        }
        let (value, done) = {
            let mut st = self.state();
            let (bytes, value) = if let Some(c) = st.catalogs.get_mut(id) {
                if address.is_some() {
                    return Err(Error::invalid("a host catalog has no address"));
                }
                apply!(&mut *c);
                (enc(&*c), serde_json::to_value(&*c))
            } else if let Some(h) = st.hosts.get_mut(id) {
                apply!(&mut *h);
                if let Some(a) = address {
                    h.address = a.trim().into();
                }
                (enc(&*h), serde_json::to_value(&*h))
            } else if let Some(h) = st.host_sets.get_mut(id) {
                if address.is_some() {
                    return Err(Error::invalid(
                        "a host set has no address; change its hosts",
                    ));
                }
                apply!(&mut *h);
                (enc(&*h), serde_json::to_value(&*h))
            } else {
                return Err(Error::not_found(format!("{id} not found")));
            };
            let done = self.persist(vec![Write::Put(Table::Resources, id.to_owned(), bytes)]);
            (value.map_err(|e| Error::internal(e.to_string()))?, done)
        };
        done.await?;
        Ok(value)
    }
}

/// The fields of a user update; absent ones keep their value.
#[derive(Debug, Default)]
pub struct UserChange {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(true)` gives the admin role, `Some(false)` the user role.
    pub admin: Option<bool>,
    /// Replaces the user's projects; an empty list gives it every project.
    pub project_ids: Option<Vec<String>>,
}

/// Every id must be a project.
fn check_projects(st: &State, ids: &[String]) -> Result<(), Error> {
    for id in ids {
        if st.scopes.get(id).is_none_or(|s| s.kind != "project") {
            return Err(Error::invalid(format!(
                "{id} is not a project scope; users are given projects (p_…)"
            )));
        }
    }
    Ok(())
}

fn apply_change(list: &mut Vec<String>, change: ListChange, ids: Vec<String>) {
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

fn drop_host_sources(st: &mut State, sets: &[String], now: Timestamp) -> Vec<Write> {
    let mut writes = Vec::new();
    for t in st.targets.values_mut() {
        if t.host_source_ids.iter().any(|h| sets.contains(h)) {
            t.host_source_ids.retain(|h| !sets.contains(h));
            t.version += 1;
            t.updated_time = now;
            writes.push(Write::Put(Table::Resources, t.id.clone(), enc(&*t)));
        }
    }
    writes
}
