//! The authorization token: what a controller signs and a worker verifies on its own.
//!
//! Binary layout (version 1), every integer big-endian, every string u8-length-prefixed:
//!
//! ```text
//! version u8 = 1 | key id [8] | session id | target id | user id | host id | endpoint
//! | issued at u64 | expires at u64 | connection limit i32 | worker id | worker address
//! | cluster CA fingerprint [32] | Ed25519 signature [64]
//! ```
//!
//! The signature covers a domain-separation label followed by every byte before it. The text
//! form is `s1_` followed by unpadded base64url. (Boundary's is base58; encoding base58 is
//! quadratic in the length and took a quarter of the controller's CPU at 4,000 authorizations
//! a second, while base64url is linear. The prefix names the format and keeps a token from
//! ever starting with `-`, where a command line would take it for a flag.) Unlike Boundary's
//! token it holds no private key: whoever holds it can use the session, but cannot impersonate
//! a worker or mint a token.

use std::collections::HashMap;

/// Ed25519 public key, re-exported for workers and the controller.
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{put_str8, DecodeError, Reader};

/// Token format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Longest id (session, target, user, host, worker) a token carries.
pub const MAX_ID: usize = 64;
/// Longest endpoint or worker address.
pub const MAX_ADDR: usize = 255;
/// Longest token in its binary form: every field at its bound.
pub const MAX_BINARY: usize =
    1 + 8 + 4 * (1 + MAX_ID) + 2 * (1 + MAX_ADDR) + 8 + 8 + 4 + (1 + MAX_ID) + 32 + 64;
/// Longest token in its text form; longer input is refused before decoding.
pub const MAX_TEXT: usize = TEXT_PREFIX.len() + MAX_BINARY.div_ceil(3) * 4;

/// Start of a token's text form (format version 1).
pub const TEXT_PREFIX: &str = "s1_";
const SIGNING_LABEL: &[u8] = b"sluice authz token v1\0";

/// Identifies a signing key: the first 8 bytes of SHA-256 of its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }
}

/// The claims of an authorization token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzToken {
    /// Session id (`s_…`).
    pub session_id: String,
    /// Target id (`ttcp_…`).
    pub target_id: String,
    /// User id (`u_…`).
    pub user_id: String,
    /// Host id (`hst_…`), empty for a target with a direct address.
    pub host_id: String,
    /// `host:port` the worker dials.
    pub endpoint: String,
    /// Seconds since the Unix epoch when the controller issued it.
    pub issued_at: u64,
    /// Seconds since the Unix epoch after which the session is over.
    pub expires_at: u64,
    /// Connections the session allows in all; -1 means unlimited.
    pub connection_limit: i32,
    /// The one worker at which the token is valid.
    pub worker_id: String,
    /// Where that worker listens (`host:port`).
    pub worker_addr: String,
    /// SHA-256 of the DER of the cluster CA certificate the worker's certificate chains to.
    pub ca_fingerprint: [u8; 32],
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than any valid token.
    #[error("authorization token is {0} characters, more than any valid token")]
    TooLong(usize),
    /// Not the text form of a token.
    #[error("authorization token is not Sluice token text (s1_ followed by base64url); copy the whole token")]
    NotTokenText,
    /// Structurally invalid.
    #[error("authorization token is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A field was over its bound when building a token.
    #[error("{0} is too long for a token")]
    FieldTooLong(&'static str),
    /// Signed by a key this verifier does not hold.
    #[error("authorization token was signed by an unknown key; it was not issued by this cluster's controller")]
    UnknownKey,
    /// The signature did not verify.
    #[error("authorization token signature is invalid; the token was forged or altered")]
    BadSignature,
    /// Past its expiry.
    #[error("session {session_id} expired at {expires_at} (unix seconds)")]
    Expired {
        /// The session.
        session_id: String,
        /// When it expired.
        expires_at: u64,
    },
    /// Issued for another worker.
    #[error("authorization token is for worker {expected} at {addr}, not this worker ({actual})")]
    WrongWorker {
        /// The worker the token names.
        expected: String,
        /// That worker's address.
        addr: String,
        /// This worker.
        actual: String,
    },
}

/// A decoded token whose signature has not been checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    key_id: KeyId,
    claims: AuthzToken,
    signed: Vec<u8>,
    signature: [u8; 64],
}

/// The text form of a token's bytes.
pub fn binary_to_text(bytes: &[u8]) -> String {
    use base64::Engine;
    let mut out = String::with_capacity(TEXT_PREFIX.len() + bytes.len().div_ceil(3) * 4);
    out.push_str(TEXT_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

/// The bytes of a token's text form (surrounding whitespace ignored).
pub fn text_to_binary(text: &str) -> Result<Vec<u8>, TokenError> {
    use base64::Engine;
    let text = text.trim();
    if text.len() > MAX_TEXT {
        return Err(TokenError::TooLong(text.len()));
    }
    let body = text
        .strip_prefix(TEXT_PREFIX)
        .ok_or(TokenError::NotTokenText)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::NotTokenText)
}

impl SignedToken {
    /// Decodes the text form. Checks structure only: use [`KeySet::verify`] before trusting it.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        Self::decode_binary(&text_to_binary(text)?)
    }

    /// Decodes the binary form.
    pub fn decode_binary(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() > MAX_BINARY {
            return Err(TokenError::Malformed(DecodeError::TooLong {
                field: "token",
                len: bytes.len(),
                max: MAX_BINARY,
            }));
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Unknown {
                field: "token version",
                value: version.into(),
            }
            .into());
        }
        let key_id = KeyId(r.array("key id")?);
        let claims = AuthzToken {
            session_id: r.str8(MAX_ID, "session id")?,
            target_id: r.str8(MAX_ID, "target id")?,
            user_id: r.str8(MAX_ID, "user id")?,
            host_id: r.str8(MAX_ID, "host id")?,
            endpoint: r.str8(MAX_ADDR, "endpoint")?,
            issued_at: r.u64("issued at")?,
            expires_at: r.u64("expires at")?,
            connection_limit: r.i32("connection limit")?,
            worker_id: r.str8(MAX_ID, "worker id")?,
            worker_addr: r.str8(MAX_ADDR, "worker address")?,
            ca_fingerprint: r.array("ca fingerprint")?,
        };
        let signed_len = bytes.len() - r.remaining();
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(Self {
            key_id,
            claims,
            signed: bytes[..signed_len].to_vec(),
            signature,
        })
    }

    /// The claims, unverified. A client may read them to find its worker; a worker must not.
    pub fn unverified(&self) -> &AuthzToken {
        &self.claims
    }

    /// The key that claims to have signed it.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
}

impl AuthzToken {
    fn encode_claims(&self, key_id: KeyId) -> Result<Vec<u8>, TokenError> {
        for (field, value, max) in [
            ("session id", &self.session_id, MAX_ID),
            ("target id", &self.target_id, MAX_ID),
            ("user id", &self.user_id, MAX_ID),
            ("host id", &self.host_id, MAX_ID),
            ("endpoint", &self.endpoint, MAX_ADDR),
            ("worker id", &self.worker_id, MAX_ID),
            ("worker address", &self.worker_addr, MAX_ADDR),
        ] {
            if value.len() > max {
                return Err(TokenError::FieldTooLong(field));
            }
        }
        let mut out = Vec::with_capacity(256);
        out.push(VERSION);
        out.extend_from_slice(&key_id.0);
        put_str8(&mut out, &self.session_id);
        put_str8(&mut out, &self.target_id);
        put_str8(&mut out, &self.user_id);
        put_str8(&mut out, &self.host_id);
        put_str8(&mut out, &self.endpoint);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.connection_limit.to_be_bytes());
        put_str8(&mut out, &self.worker_id);
        put_str8(&mut out, &self.worker_addr);
        out.extend_from_slice(&self.ca_fingerprint);
        Ok(out)
    }
}

fn signing_message(signed: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_LABEL.len() + signed.len());
    msg.extend_from_slice(SIGNING_LABEL);
    msg.extend_from_slice(signed);
    msg
}

/// Signs tokens with one Ed25519 key.
pub struct TokenSigner {
    key: SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer over a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = KeyId::of(&key.verifying_key());
        Self { key, id }
    }

    /// The public half, for workers.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `claims` and returns the text form.
    pub fn sign(&self, claims: &AuthzToken) -> Result<String, TokenError> {
        let mut bytes = claims.encode_claims(self.id)?;
        let sig: Signature = self.key.sign(&signing_message(&bytes));
        bytes.extend_from_slice(&sig.to_bytes());
        Ok(binary_to_text(&bytes))
    }
}

/// The public keys a worker accepts tokens from, by key id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<KeyId, VerifyingKey>,
}

impl KeySet {
    /// Adds a key; tokens signed by it verify until it is removed.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(KeyId::of(&key), key);
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the signature, then expiry at `now` and that the token names `worker_id`.
    pub fn verify(
        &self,
        token: &SignedToken,
        now: u64,
        worker_id: &str,
    ) -> Result<AuthzToken, TokenError> {
        let key = self.keys.get(&token.key_id).ok_or(TokenError::UnknownKey)?;
        let sig = Signature::from_bytes(&token.signature);
        key.verify(&signing_message(&token.signed), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = &token.claims;
        if claims.worker_id != worker_id {
            return Err(TokenError::WrongWorker {
                expected: claims.worker_id.clone(),
                addr: claims.worker_addr.clone(),
                actual: worker_id.to_owned(),
            });
        }
        if now >= claims.expires_at {
            return Err(TokenError::Expired {
                session_id: claims.session_id.clone(),
                expires_at: claims.expires_at,
            });
        }
        Ok(claims.clone())
    }
}

#[cfg(test)]
mod tests;
