//! Entry points for the fuzz targets in `fuzz/`: each target is one call.

/// Decodes arbitrary bytes as a token in both text and binary form; must never panic.
pub fn token_decode(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::SignedToken::decode(text);
    }
    if let Ok(t) = crate::SignedToken::decode_binary(data) {
        // Whatever decodes must re-encode to the same claims when signed again.
        let signer = crate::TokenSigner::from_seed(&[1; 32]);
        if let Ok(text) = signer.sign(t.unverified()) {
            let again = crate::SignedToken::decode(&text).expect("re-encoded token decodes");
            assert_eq!(again.unverified(), t.unverified());
        }
    }
    let _ = crate::frames::Frame::decode(data);
}
