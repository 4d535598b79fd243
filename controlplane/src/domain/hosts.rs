//! Static host catalogs, hosts and host sets. Deleting what a session depends on cancels the
//! session, as Boundary does.

use jiff::Timestamp;

use crate::controller::*;
use crate::domain::*;
use crate::error::Error;
use crate::ids::new_id;
use crate::model::*;
use crate::store::{Table, Write};

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

pub(crate) fn drop_host_sources(st: &mut State, sets: &[String], now: Timestamp) -> Vec<Write> {
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

impl Controller {
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
    pub(crate) fn catalog_project(&self, catalog_id: &str) -> Option<String> {
        self.state()
            .catalogs
            .get(catalog_id)
            .map(|c| c.scope_id.clone())
    }

    /// Whether the caller may see what is in host catalog `catalog_id`.
    pub(crate) fn may_see_catalog(&self, p: &Principal, catalog_id: &str) -> bool {
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
