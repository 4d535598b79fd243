//! Password accounts: create, list, read, delete, and passwords set by an administrator or
//! changed by their owner. Deleting an account revokes its auth tokens and cancels the sessions
//! made with them, as deleting an auth token does.

use jiff::Timestamp;
use tracing::info;

use crate::controller::{enc, Controller, Principal};
use crate::domain::seed::dev_ids;
use crate::domain::{cancel_where, check_version, require_admin, revoke_tokens_where};
use crate::error::Error;
use crate::ids::new_id;
use crate::model::Account;
use crate::store::{Table, Write};

fn check_login_name(login_name: &str) -> Result<(), Error> {
    let valid = (3..=64).contains(&login_name.len())
        && login_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "a login name is 3–64 characters of lowercase letters, digits and - _ . @",
        ))
    }
}

fn check_password(password: &str) -> Result<(), Error> {
    if (8..=1024).contains(&password.len()) {
        Ok(())
    } else {
        Err(Error::invalid("a password is 8–1024 characters"))
    }
}

fn check_auth_method(auth_method_id: &str) -> Result<(), Error> {
    if auth_method_id == dev_ids::AUTH_METHOD {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "auth method {auth_method_id} not found"
        )))
    }
}

/// Hashes a password off the async threads (Argon2id is deliberately slow).
async fn hash(password: &str) -> Result<String, Error> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || crate::controller::hash_password(&pw))
        .await
        .map_err(|e| Error::internal(e.to_string()))
}

impl Controller {
    /// Creates a password account; `user_id` (optional) associates it with a user at once.
    pub async fn create_account(
        &self,
        p: &Principal,
        auth_method_id: &str,
        login_name: &str,
        password: &str,
        user_id: Option<&str>,
    ) -> Result<Account, Error> {
        require_admin(p, "create accounts")?;
        check_auth_method(auth_method_id)?;
        check_login_name(login_name)?;
        check_password(password)?;
        let taken = |a: &Account| a.auth_method_id == auth_method_id && a.login_name == login_name;
        let conflict = || {
            Error::conflict(format!(
                "an account with login name {login_name:?} already exists"
            ))
        };
        {
            let st = self.state();
            if st.accounts.values().any(taken) {
                return Err(conflict());
            }
            if let Some(u) = user_id {
                if !st.users.contains_key(u) {
                    return Err(Error::not_found(format!("user {u} not found")));
                }
            }
        }
        let password_hash = hash(password).await?;
        let now = Timestamp::now();
        let a = Account {
            id: new_id("acctpw"),
            auth_method_id: auth_method_id.into(),
            login_name: login_name.into(),
            password_hash,
            user_id: user_id.unwrap_or_default().into(),
            version: 1,
            created_time: now,
            updated_time: now,
        };
        let done = {
            let mut st = self.state();
            // Checked again: another create may have taken the name while this one hashed.
            if st.accounts.values().any(taken) {
                return Err(conflict());
            }
            if !a.user_id.is_empty() && !st.users.contains_key(&a.user_id) {
                return Err(Error::not_found(format!("user {} not found", a.user_id)));
            }
            st.accounts.insert(a.id.clone(), a.clone());
            self.persist(vec![Write::Put(Table::Resources, a.id.clone(), enc(&a))])
        };
        done.await?;
        info!(account_id = %a.id, "account created");
        Ok(a)
    }

    /// Password accounts of an auth method (admin only).
    pub fn list_accounts(
        &self,
        p: &Principal,
        auth_method_id: &str,
    ) -> Result<Vec<Account>, Error> {
        require_admin(p, "list accounts")?;
        check_auth_method(auth_method_id)?;
        Ok(self
            .state()
            .accounts
            .values()
            .filter(|a| a.auth_method_id == auth_method_id)
            .cloned()
            .collect())
    }

    /// One account: an administrator may read any, a user only its own.
    pub fn read_account(&self, p: &Principal, id: &str) -> Result<Account, Error> {
        let a = self
            .state()
            .accounts
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("account {id} not found")))?;
        if !p.user.admin && a.user_id != p.user.id {
            return Err(Error::forbidden(format!(
                "account {id} is not yours; only an administrator may read another user's account"
            )));
        }
        Ok(a)
    }

    /// Deletes an account (admin only): its auth tokens are revoked and the sessions made with
    /// them canceled.
    pub async fn delete_account(&self, p: &Principal, id: &str) -> Result<(), Error> {
        require_admin(p, "delete accounts")?;
        let now = Timestamp::now();
        let (done, pushes) = {
            let mut st = self.state();
            if !st.accounts.contains_key(id) {
                return Err(Error::not_found(format!("account {id} not found")));
            }
            if st
                .auth_tokens
                .get(&p.auth_token_id)
                .is_some_and(|t| t.account_id == id)
            {
                return Err(Error::invalid(
                    "you cannot delete the account you are logged in with; log in with another administrator's account",
                ));
            }
            st.accounts.remove(id);
            let (tokens, mut writes) = revoke_tokens_where(&mut st, |t| t.account_id == id);
            let (cancels, pushes) =
                cancel_where(&mut st, now, |s| tokens.contains(&s.auth_token_id));
            writes.extend(cancels);
            writes.push(Write::Delete(Table::Resources, id.to_owned()));
            (self.persist(writes), pushes)
        };
        done.await?;
        self.push_cancels(pushes);
        info!(account_id = %id, "account deleted");
        Ok(())
    }

    /// Replaces an account's password without the current one (admin only).
    pub async fn set_account_password(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        password: &str,
    ) -> Result<Account, Error> {
        require_admin(p, "set passwords")?;
        check_password(password)?;
        let current = self.read_account(p, id)?;
        check_version(id, current.version, version)?;
        let password_hash = hash(password).await?;
        self.store_password(id, current.version, password_hash)
            .await
    }

    /// Changes the password of the caller's own account, given the current one. Wrong current
    /// passwords count towards the login's lockout, as failed logins do.
    pub async fn change_account_password(
        &self,
        p: &Principal,
        id: &str,
        version: Option<u32>,
        current_password: &str,
        new_password: &str,
    ) -> Result<Account, Error> {
        let current = self.read_account(p, id)?;
        if current.user_id != p.user.id {
            return Err(Error::forbidden(format!(
                "account {id} is not yours; an administrator sets other users' passwords with `sluice accounts set-password`"
            )));
        }
        check_version(id, current.version, version)?;
        check_password(new_password)?;
        self.logins
            .attempt(&current.auth_method_id, &current.login_name)?;
        if !self
            .verify_password(current.password_hash.clone(), current_password)
            .await?
        {
            return Err(Error::unauthenticated(
                "the current password is wrong; the password was not changed",
            ));
        }
        self.logins
            .succeeded(&current.auth_method_id, &current.login_name);
        let password_hash = hash(new_password).await?;
        self.store_password(id, current.version, password_hash)
            .await
    }

    /// Stores a new password hash if the account is still at `version`.
    async fn store_password(
        &self,
        id: &str,
        version: u32,
        password_hash: String,
    ) -> Result<Account, Error> {
        let (a, done) = {
            let mut st = self.state();
            let a = st
                .accounts
                .get_mut(id)
                .ok_or_else(|| Error::not_found(format!("account {id} not found")))?;
            // Another change may have landed while the password hashed.
            check_version(id, a.version, Some(version))?;
            a.password_hash = password_hash;
            a.version += 1;
            a.updated_time = Timestamp::now();
            let a = a.clone();
            let done = self.persist(vec![Write::Put(Table::Resources, a.id.clone(), enc(&a))]);
            (a, done)
        };
        done.await?;
        info!(account_id = %id, "password changed");
        Ok(a)
    }

    /// Accounts of a user.
    pub fn user_accounts(&self, user_id: &str) -> Vec<String> {
        self.state()
            .accounts
            .values()
            .filter(|a| a.user_id == user_id)
            .map(|a| a.id.clone())
            .collect()
    }
}
