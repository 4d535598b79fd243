//! `sluice-bench`: for now, the cost of the worker's admission step (token decode + Ed25519
//! verify), the one piece of per-session work on the worker's critical path. The full harness
//! (direct TCP vs Sluice vs HAProxy/nginx/socat/ssh -L) is issue 3.
#![forbid(unsafe_code)]

use std::time::Instant;

use sluice_proto::{AuthzToken, KeySet, SignedToken, TokenSigner};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u32 = if quick { 2_000 } else { 50_000 };
    let signer = TokenSigner::from_seed(&[3; 32]);
    let mut keys = KeySet::default();
    keys.insert(signer.verifying_key());
    let claims = AuthzToken {
        session_id: "s_h7vBIhH5SZ".into(),
        target_id: "ttcp_1234567890".into(),
        user_id: "u_1234567890".into(),
        host_id: "hst_1234567890".into(),
        endpoint: "localhost:22".into(),
        issued_at: 1_700_000_000,
        expires_at: 1_700_028_800,
        connection_limit: -1,
        worker_id: "w_1234567890".into(),
        worker_addr: "127.0.0.1:9202".into(),
        ca_fingerprint: [7; 32],
    };
    let text = signer.sign(&claims).expect("sign");
    let start = Instant::now();
    for _ in 0..n {
        let t = SignedToken::decode(&text).expect("decode");
        keys.verify(&t, 1_700_000_001, "w_1234567890")
            .expect("verify");
    }
    let per = start.elapsed() / n;
    println!(
        "token decode+verify: {per:?} per token over {n} tokens ({} chars)",
        text.len()
    );
}
