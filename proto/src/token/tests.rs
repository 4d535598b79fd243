use super::*;

/// A deterministic harness: a fixed signer and a clock the test moves by hand.
struct Harness {
    signer: TokenSigner,
    keys: KeySet,
    now: u64,
}

impl Harness {
    fn new() -> Self {
        let signer = TokenSigner::from_seed(&[7u8; 32]);
        let mut keys = KeySet::default();
        keys.insert(signer.verifying_key());
        Self {
            signer,
            keys,
            now: 1_700_000_000,
        }
    }

    fn claims(&self) -> AuthzToken {
        AuthzToken {
            session_id: "s_h7vBIhH5SZ".into(),
            target_id: "ttcp_1234567890".into(),
            user_id: "u_1234567890".into(),
            host_id: "hst_1234567890".into(),
            endpoint: "localhost:22".into(),
            issued_at: self.now,
            expires_at: self.now + 28_800,
            connection_limit: 1,
            worker_id: "w_1234567890".into(),
            worker_addr: "127.0.0.1:9202".into(),
            ca_fingerprint: [9u8; 32],
        }
    }

    fn verify(&self, text: &str) -> Result<AuthzToken, TokenError> {
        let t = SignedToken::decode(text)?;
        self.keys.verify(&t, self.now, "w_1234567890")
    }
}

#[test]
fn signed_token_verifies_and_round_trips_every_claim() {
    let h = Harness::new();
    let text = h.signer.sign(&h.claims()).unwrap();
    assert_eq!(h.verify(&text).unwrap(), h.claims());
    // Surrounding whitespace (a pasted token) is tolerated.
    assert_eq!(h.verify(&format!("  {text}\n")).unwrap(), h.claims());
}

#[test]
fn expiry_follows_the_virtual_clock() {
    let mut h = Harness::new();
    let text = h.signer.sign(&h.claims()).unwrap();
    h.now += 28_799;
    assert!(h.verify(&text).is_ok());
    h.now += 1;
    assert!(matches!(h.verify(&text), Err(TokenError::Expired { .. })));
}

#[test]
fn every_tampered_byte_is_refused() {
    let h = Harness::new();
    let text = h.signer.sign(&h.claims()).unwrap();
    let bytes = crate::token::text_to_binary(&text).unwrap();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let tampered = crate::token::binary_to_text(&b);
            assert!(
                h.verify(&tampered).is_err(),
                "flipping bit {flip:#x} of byte {i} was accepted"
            );
        }
    }
}

#[test]
fn changing_any_claim_breaks_the_signature() {
    let h = Harness::new();
    let good = h.claims();
    let mut variants = Vec::new();
    macro_rules! vary {
        ($field:ident, $value:expr) => {{
            let mut c = good.clone();
            c.$field = $value;
            variants.push((stringify!($field), c));
        }};
    }
    vary!(session_id, "s_other00000".into());
    vary!(target_id, "ttcp_0987654321".into());
    vary!(user_id, "u_0987654321".into());
    vary!(host_id, String::new());
    vary!(endpoint, "localhost:23".into());
    vary!(issued_at, good.issued_at - 1);
    vary!(expires_at, good.expires_at + 3600);
    vary!(connection_limit, -1);
    vary!(worker_addr, "127.0.0.1:9999".into());
    vary!(ca_fingerprint, [1u8; 32]);
    let signature = {
        let text = h.signer.sign(&good).unwrap();
        let b = crate::token::text_to_binary(&text).unwrap();
        b[b.len() - 64..].to_vec()
    };
    for (field, claims) in variants {
        // Re-encode the altered claims under the original signature: a forgery.
        let mut bytes = claims
            .encode_claims(KeyId::of(&h.signer.verifying_key()))
            .unwrap();
        bytes.extend_from_slice(&signature);
        let forged = crate::token::binary_to_text(&bytes);
        assert_eq!(h.verify(&forged), Err(TokenError::BadSignature), "{field}");
    }
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let h = Harness::new();
    let text = h.signer.sign(&h.claims()).unwrap();
    let bytes = crate::token::text_to_binary(&text).unwrap();
    for n in 0..bytes.len() {
        let t = crate::token::binary_to_text(&bytes[..n]);
        assert!(
            SignedToken::decode(&t).is_err(),
            "prefix of {n} bytes decoded"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let t = crate::token::binary_to_text(&longer);
    assert!(matches!(
        SignedToken::decode(&t),
        Err(TokenError::Malformed(DecodeError::Trailing(1)))
    ));
}

#[test]
fn a_token_from_another_key_or_for_another_worker_is_refused() {
    let h = Harness::new();
    let other = TokenSigner::from_seed(&[8u8; 32]);
    let text = other.sign(&h.claims()).unwrap();
    assert_eq!(h.verify(&text), Err(TokenError::UnknownKey));

    let mut claims = h.claims();
    claims.worker_id = "w_0987654321".into();
    let text = h.signer.sign(&claims).unwrap();
    assert!(matches!(
        h.verify(&text),
        Err(TokenError::WrongWorker { .. })
    ));
}

#[test]
fn garbage_and_oversized_text_is_refused_without_panicking() {
    let h = Harness::new();
    assert_eq!(h.verify("not token text"), Err(TokenError::NotTokenText));
    assert_eq!(h.verify("s1_not*base64"), Err(TokenError::NotTokenText));
    assert!(h.verify("").is_err());
    let huge = "1".repeat(MAX_TEXT + 1);
    assert_eq!(h.verify(&huge), Err(TokenError::TooLong(MAX_TEXT + 1)));
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for len in 0..400 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect();
        let _ = SignedToken::decode_binary(&bytes);
    }
}

#[test]
fn oversized_fields_cannot_be_signed() {
    let h = Harness::new();
    let mut claims = h.claims();
    claims.endpoint = "x".repeat(MAX_ADDR + 1);
    assert_eq!(
        h.signer.sign(&claims),
        Err(TokenError::FieldTooLong("endpoint"))
    );
}

#[test]
fn a_token_with_every_field_at_its_bound_fits_the_text_limit() {
    let h = Harness::new();
    let id = "i".repeat(MAX_ID);
    let addr = "a".repeat(MAX_ADDR);
    let claims = AuthzToken {
        session_id: id.clone(),
        target_id: id.clone(),
        user_id: id.clone(),
        host_id: id.clone(),
        endpoint: addr.clone(),
        issued_at: u64::MAX,
        expires_at: u64::MAX,
        connection_limit: i32::MAX,
        worker_id: "w_1234567890".into(),
        worker_addr: addr,
        ca_fingerprint: [0xff; 32],
    };
    let text = h.signer.sign(&claims).unwrap();
    assert!(text.len() <= MAX_TEXT, "{} > {}", text.len(), MAX_TEXT);
    assert_eq!(h.verify(&text).unwrap(), claims);
}

/// The committed fuzz seeds must stay valid tokens of the current format, or the fuzzer starts
/// from noise. Regenerate them with `SLUICE_WRITE_FUZZ_CORPUS=fuzz/corpus/token_decode`.
#[test]
fn committed_fuzz_seeds_match_the_token_format() {
    if std::env::var("SLUICE_WRITE_FUZZ_CORPUS").is_ok() {
        return write_fuzz_corpus();
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/token_decode");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
    let h = Harness::new();
    for name in ["seed_binary", "seed_binary_direct"] {
        let t = SignedToken::decode_binary(&read(name)).unwrap();
        assert!(h.keys.verify(&t, h.now, "w_1234567890").is_ok(), "{name}");
    }
    let text = String::from_utf8(read("seed_text")).unwrap();
    assert!(h.verify(&text).is_ok());
    assert!(SignedToken::decode_binary(&read("seed_truncated")).is_err());
}

fn write_fuzz_corpus() {
    let dir = std::env::var("SLUICE_WRITE_FUZZ_CORPUS").unwrap();
    let h = Harness::new();
    let text = h.signer.sign(&h.claims()).unwrap();
    let bin = crate::token::text_to_binary(&text).unwrap();
    let mut direct = h.claims();
    direct.host_id.clear();
    direct.connection_limit = -1;
    let text2 = h.signer.sign(&direct).unwrap();
    std::fs::write(format!("{dir}/seed_text"), &text).unwrap();
    std::fs::write(format!("{dir}/seed_binary"), &bin).unwrap();
    std::fs::write(
        format!("{dir}/seed_binary_direct"),
        crate::token::text_to_binary(&text2).unwrap(),
    )
    .unwrap();
    std::fs::write(format!("{dir}/seed_truncated"), &bin[..bin.len() / 2]).unwrap();
    let hello = crate::frames::Frame::ClientHello {
        nonce: [1; 16],
        token: bin,
    }
    .to_vec();
    std::fs::write(format!("{dir}/seed_hello_frame"), hello).unwrap();
}
