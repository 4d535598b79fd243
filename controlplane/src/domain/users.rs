//! Users: create, list, read, update (role and projects), delete, and their accounts.

use jiff::Timestamp;
use tracing::info;

use crate::controller::*;
use crate::domain::*;
use crate::error::Error;
use crate::ids::new_id;
use crate::model::*;
use crate::store::{Table, Write};

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
pub(crate) fn check_projects(st: &State, ids: &[String]) -> Result<(), Error> {
    for id in ids {
        if st.scopes.get(id).is_none_or(|s| s.kind != "project") {
            return Err(Error::invalid(format!(
                "{id} is not a project scope; users are given projects (p_…)"
            )));
        }
    }
    Ok(())
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
