//! Scopes: `global` holds orgs, an org holds projects, a project holds targets and host
//! catalogs. Deleting a scope deletes what it holds and cancels the sessions that used it, as
//! Boundary does.

use jiff::Timestamp;
use tracing::info;

use crate::controller::{enc, Controller, Principal};
use crate::domain::{cancel_where, check_name, check_version, require_admin};
use crate::error::Error;
use crate::ids::new_id;
use crate::model::Scope;
use crate::store::{Table, Write};

/// The global scope, parent of every org. It is not stored.
pub fn global() -> Scope {
    Scope {
        id: "global".into(),
        kind: "global".into(),
        name: "global".into(),
        description: "Global Scope".into(),
        parent_scope_id: String::new(),
        version: 1,
        created_time: Timestamp::UNIX_EPOCH,
        updated_time: Timestamp::UNIX_EPOCH,
    }
}

impl Controller {
    /// Creates an org (under `global`) or a project (under an org); admin only. Names are
    /// unique among siblings.
    pub async fn create_scope(
        &self,
        p: &Principal,
        parent_id: &str,
        name: &str,
        description: &str,
    ) -> Result<Scope, Error> {
        require_admin(p, "create scopes")?;
        check_name(name)?;
        let now = Timestamp::now();
        let (s, done) = {
            let mut st = self.state();
            let kind = if parent_id == "global" {
                "org"
            } else {
                match st.scopes.get(parent_id) {
                    Some(s) if s.kind == "org" => "project",
                    Some(_) => {
                        return Err(Error::invalid(format!(
                            "{parent_id} is a project; projects hold no scopes. Create orgs in global and projects in an org"
                        )))
                    }
                    None => {
                        return Err(Error::not_found(format!(
                            "scope {parent_id} not found"
                        )))
                    }
                }
            };
            if !name.is_empty()
                && st
                    .scopes
                    .values()
                    .any(|s| s.parent_scope_id == parent_id && s.name == name)
            {
                return Err(Error::conflict(format!(
                    "a scope named {name:?} already exists in {parent_id}"
                )));
            }
            let s = Scope {
                id: new_id(if kind == "org" { "o" } else { "p" }),
                kind: kind.into(),
                name: name.into(),
                description: description.into(),
                parent_scope_id: parent_id.into(),
                version: 1,
                created_time: now,
                updated_time: now,
            };
            st.scopes.insert(s.id.clone(), s.clone());
            let done = self.persist(vec![Write::Put(Table::Resources, s.id.clone(), enc(&s))]);
            (s, done)
        };
        done.await?;
        info!(scope_id = %s.id, kind = %s.kind, "scope created");
        Ok(s)
    }

    /// The scopes directly in `parent_id` (`global` lists orgs), or with `recursive` every
    /// scope below it; of those, only the projects the caller was given and the orgs that
    /// hold one.
    pub fn list_scopes(
        &self,
        p: &Principal,
        parent_id: &str,
        recursive: bool,
    ) -> Result<Vec<Scope>, Error> {
        let st = self.state();
        if parent_id != "global" && !st.scopes.contains_key(parent_id) {
            return Err(Error::not_found(format!("scope {parent_id} not found")));
        }
        Ok(st
            .scopes
            .values()
            .filter(|s| {
                s.parent_scope_id == parent_id
                    || (recursive
                        && st
                            .scopes
                            .get(&s.parent_scope_id)
                            .is_some_and(|parent| parent.parent_scope_id == parent_id))
            })
            .filter(|s| may_see_scope(p, &st, s))
            .cloned()
            .collect())
    }

    /// One scope (`global` included), if the caller may see it.
    pub fn read_scope(&self, p: &Principal, id: &str) -> Result<Scope, Error> {
        let s = self
            .scope_or_global(id)
            .ok_or_else(|| Error::not_found(format!("scope {id} not found")))?;
        if !may_see_scope(p, &self.state(), &s) {
            return Err(Error::forbidden(format!(
                "scope {id} holds no project user {} has been given; an administrator can add one with `sluice users update -id {} -project-id ...`",
                p.user.id, p.user.id
            )));
        }
        Ok(s)
    }

    /// One scope (`global` included), whoever asks.
    pub(crate) fn scope_or_global(&self, id: &str) -> Option<Scope> {
        if id == "global" {
            return Some(global());
        }
        self.scope(id)
    }

    /// Changes a scope's name or description (admin only); stale versions get 409.
    pub async fn update_scope(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<Scope, Error> {
        require_admin(p, "change scopes")?;
        if id == "global" {
            return Err(Error::invalid("the global scope cannot be changed"));
        }
        if let Some(n) = &name {
            check_name(n)?;
        }
        let (s, done) = {
            let mut st = self.state();
            let current = st
                .scopes
                .get(id)
                .ok_or_else(|| Error::not_found(format!("scope {id} not found")))?;
            check_version(id, current.version, version)?;
            if let Some(n) = name.as_deref().filter(|n| !n.is_empty()) {
                let parent = current.parent_scope_id.clone();
                if st
                    .scopes
                    .values()
                    .any(|s| s.id != id && s.parent_scope_id == parent && s.name == n)
                {
                    return Err(Error::conflict(format!(
                        "a scope named {n:?} already exists in {parent}"
                    )));
                }
            }
            let s = st.scopes.get_mut(id).expect("checked above");
            if let Some(n) = name {
                s.name = n;
            }
            if let Some(d) = description {
                s.description = d;
            }
            s.version += 1;
            s.updated_time = Timestamp::now();
            let s = s.clone();
            let done = self.persist(vec![Write::Put(Table::Resources, s.id.clone(), enc(&s))]);
            (s, done)
        };
        done.await?;
        Ok(s)
    }

    /// Deletes an org or project with everything in it: projects, targets, host catalogs,
    /// hosts and host sets. Their sessions are canceled and their workers told at once.
    pub async fn delete_scope(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete scopes")?;
        if id == "global" {
            return Err(Error::invalid("the global scope cannot be deleted"));
        }
        let now = Timestamp::now();
        let (done, pushes, removed) = {
            let mut st = self.state();
            if !st.scopes.contains_key(id) {
                return Err(Error::not_found(format!("scope {id} not found")));
            }
            let scopes: Vec<String> = st
                .scopes
                .values()
                .filter(|s| s.id == id || s.parent_scope_id == id)
                .map(|s| s.id.clone())
                .collect();
            let (mut writes, pushes) = cancel_where(&mut st, now, |s| scopes.contains(&s.scope_id));
            let catalogs: Vec<String> = st
                .catalogs
                .values()
                .filter(|c| scopes.contains(&c.scope_id))
                .map(|c| c.id.clone())
                .collect();
            let mut gone: Vec<String> = Vec::new();
            gone.extend(
                st.hosts
                    .values()
                    .filter(|h| catalogs.contains(&h.catalog_id))
                    .map(|h| h.id.clone()),
            );
            gone.extend(
                st.host_sets
                    .values()
                    .filter(|h| catalogs.contains(&h.catalog_id))
                    .map(|h| h.id.clone()),
            );
            gone.extend(
                st.targets
                    .values()
                    .filter(|t| scopes.contains(&t.scope_id))
                    .map(|t| t.id.clone()),
            );
            gone.extend(catalogs);
            gone.extend(scopes);
            for g in &gone {
                st.hosts.remove(g);
                st.host_sets.remove(g);
                st.targets.remove(g);
                st.catalogs.remove(g);
                st.scopes.remove(g);
                writes.push(Write::Delete(Table::Resources, g.clone()));
            }
            (self.persist(writes), pushes, gone.len())
        };
        done.await?;
        let canceled = pushes.len();
        self.push_cancels(pushes);
        info!(scope_id = %id, resources = removed, sessions_canceled = canceled, "scope deleted");
        Ok(())
    }
}

/// A user confined to projects sees global, those projects, and the orgs that hold them.
fn may_see_scope(p: &Principal, st: &crate::controller::State, s: &Scope) -> bool {
    match s.kind.as_str() {
        "project" => p.user.may_use_project(&s.id),
        "org" => {
            p.user.admin
                || p.user.project_ids.is_empty()
                || p.user.project_ids.iter().any(|id| {
                    st.scopes
                        .get(id)
                        .is_some_and(|project| project.parent_scope_id == s.id)
                })
        }
        _ => true,
    }
}
