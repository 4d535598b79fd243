//! Auth tokens: the caller behind a bearer token, and listing, reading and revoking tokens.

use jiff::Timestamp;
use subtle::ConstantTimeEq;
use tracing::info;

use crate::controller::*;
use crate::domain::*;
use crate::error::Error;
use crate::store::{Table, Write};

impl Controller {
    /// Resolves a bearer token to its user.
    pub fn principal(&self, bearer: Option<&str>) -> Result<Principal, Error> {
        let bearer = bearer.ok_or_else(|| {
            Error::unauthenticated(
                "no auth token: run `sluice authenticate password` first, or set SLUICE_TOKEN",
            )
        })?;
        let invalid = || {
            Error::unauthenticated(
                "the auth token is invalid or has expired: run `sluice authenticate password` again",
            )
        };
        // at_XXXXXXXXXX_secret
        let (id, secret) = bearer
            .get(..13)
            .zip(bearer.get(14..))
            .filter(|_| bearer.as_bytes().get(13) == Some(&b'_'))
            .ok_or_else(invalid)?;
        let st = self.state();
        let token = st.auth_tokens.get(id).ok_or_else(invalid)?;
        let given = sha256_hex(secret);
        if !bool::from(given.as_bytes().ct_eq(token.secret_sha256.as_bytes())) {
            return Err(invalid());
        }
        if token.expiration_time <= Timestamp::now() {
            return Err(invalid());
        }
        let user = st.users.get(&token.user_id).cloned().ok_or_else(invalid)?;
        Ok(Principal {
            user,
            auth_token_id: token.id.clone(),
        })
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
