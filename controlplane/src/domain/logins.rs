//! Password logins: checking a password (bounded and throttled) and issuing an auth token.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use jiff::{SignedDuration, Timestamp};
use tracing::info;

use crate::controller::*;
use crate::domain::seed::dev_ids;
use crate::error::Error;
use crate::ids::{new_id, new_secret};
use crate::model::*;
use crate::store::{Table, Write};

impl Controller {
    /// Whether `password` matches the Argon2 PHC string `hash`. At most a few checks run at
    /// once (the login throttle's slots); beyond them callers wait, then get 503.
    pub(crate) async fn verify_password(
        &self,
        hash: String,
        password: &str,
    ) -> Result<bool, Error> {
        let password = password.to_owned();
        let slot = self.logins.hash_slot().await?;
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        drop(slot);
        Ok(ok)
    }

    /// Checks a login name and password against a password auth method and issues an auth token.
    pub async fn authenticate(
        self: &Arc<Self>,
        auth_method_id: &str,
        login_name: &str,
        password: &str,
    ) -> Result<Authenticated, Error> {
        if auth_method_id != dev_ids::AUTH_METHOD {
            return Err(Error::not_found(format!(
                "auth method {auth_method_id} not found"
            )));
        }
        self.logins.attempt(auth_method_id, login_name)?;
        let account = self
            .state()
            .accounts
            .values()
            .find(|a| a.auth_method_id == auth_method_id && a.login_name == login_name)
            .cloned();
        let failed = || {
            Error::unauthenticated(format!(
                "authentication failed: wrong login name or password for auth method {auth_method_id}"
            ))
        };
        // Hash even for an unknown login name, so timing does not reveal which names exist.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => DUMMY
                .get_or_init(|| hash_password("not a password"))
                .clone(),
        };
        let ok = self.verify_password(hash, password).await?;
        let account = match account {
            Some(a) if ok => a,
            _ => return Err(failed()),
        };
        self.logins.succeeded(auth_method_id, login_name);
        if !self.state().users.contains_key(&account.user_id) {
            return Err(Error::unauthenticated(format!(
                "account {} belongs to no user; an administrator must add it to one with `sluice users add-accounts`",
                account.id
            )));
        }
        let id = new_id("at");
        let secret = new_secret();
        let now = Timestamp::now();
        let token = AuthToken {
            id: id.clone(),
            user_id: account.user_id.clone(),
            account_id: account.id.clone(),
            auth_method_id: auth_method_id.to_owned(),
            secret_sha256: sha256_hex(&secret),
            created_time: now,
            expiration_time: now
                + SignedDuration::from_secs(
                    self.auth_token_ttl_secs
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
        };
        let done = {
            let mut st = self.state();
            st.auth_tokens.insert(id.clone(), token.clone());
            self.persist(vec![Write::Put(Table::AuthTokens, id.clone(), enc(&token))])
        };
        done.await?;
        info!(auth_token_id = %id, user_id = %token.user_id, "authenticated");
        Ok(Authenticated {
            bearer: format!("{id}_{secret}"),
            token,
        })
    }
}
