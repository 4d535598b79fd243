//! Resource ids: a prefix, `_`, and 10 base62 characters, as Boundary's.

use rand::Rng;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random id with `prefix` (for example `s` → `s_h7vBIhH5SZ`).
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(prefix.len() + 11);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..10 {
        id.push(BASE62[rng.gen_range(0..BASE62.len())] as char);
    }
    id
}

/// A random secret of 32 bytes as base58 text.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bs58::encode(bytes).into_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_the_boundary_shape() {
        let id = super::new_id("s");
        assert_eq!(id.len(), 12);
        assert!(id.starts_with("s_"));
        assert!(id[2..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(super::new_id("s"), super::new_id("s"));
    }
}
