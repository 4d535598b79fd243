//! Entry points for the fuzz targets in `fuzz/`: each target is one call. Every function
//! must return normally for any input; a panic is a bug the fuzzer reports.

use crate::cluster::{self, ActivationToken, ToController, ToWorker};
use crate::frames::Frame;
use crate::token::{KeySet, SignedToken, TokenError, TokenSigner};

/// The seed of the key the fuzz targets sign with. Test-only: never a deployed key.
pub const FUZZ_KEY_SEED: [u8; 32] = [0x5a; 32];

/// Decodes arbitrary bytes as a token in both text and binary form; must never panic.
pub fn token_decode(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SignedToken::decode(text);
    }
    if let Ok(t) = SignedToken::decode_binary(data) {
        // Whatever decodes must re-encode to the same claims when signed again.
        let signer = TokenSigner::from_seed(&[1; 32]);
        if let Ok(text) = signer.sign(t.unverified()) {
            let again = SignedToken::decode(&text).expect("re-encoded token decodes");
            assert_eq!(again.unverified(), t.unverified());
        }
    }
    let _ = Frame::decode(data);
}

/// Verifies arbitrary tokens the way a worker does. The input's claims are signed again with
/// [`FUZZ_KEY_SEED`], so the fuzzer gets past the signature into the checks behind it; the
/// input as given (not signed by that key) must be refused, and so must any altered byte.
/// The first 8 bytes are the clock and the next byte picks the worker id the check uses.
pub fn token_verify(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let now = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    let pick = data[8];
    let body = &data[9..];
    let Ok(given) = SignedToken::decode_binary(body) else {
        return;
    };
    let signer = TokenSigner::from_seed(&FUZZ_KEY_SEED);
    let mut keys = KeySet::default();
    keys.insert(signer.verifying_key());
    let claims = given.unverified().clone();
    let worker = if pick & 1 == 0 {
        claims.worker_id.clone()
    } else {
        format!("{}x", claims.worker_id)
    };
    // The bytes as given carry no signature of the fuzz key (forging one is the attack).
    if let Ok(ok) = keys.verify(&given, now, &worker) {
        panic!("a token not signed by the key was accepted: {ok:?}");
    }
    let Ok(text) = signer.sign(&claims) else {
        return;
    };
    let signed = SignedToken::decode(&text).expect("a signed token decodes");
    match keys.verify(&signed, now, &worker) {
        Ok(c) => {
            assert_eq!(c, claims);
            assert_eq!(worker, claims.worker_id);
            assert!(now < claims.expires_at);
        }
        Err(TokenError::WrongWorker { .. }) => assert_ne!(worker, claims.worker_id),
        Err(TokenError::Expired { .. }) => assert!(now >= claims.expires_at),
        Err(e) => panic!("a token signed by the key was refused: {e}"),
    }
    // One altered byte anywhere in the signed part or signature is refused.
    let mut bin = crate::token::text_to_binary(&text).expect("own text");
    let at = usize::from(pick) % bin.len();
    bin[at] ^= 0x01;
    if let Ok(t) = SignedToken::decode_binary(&bin) {
        assert!(
            keys.verify(&t, now, &worker).is_err(),
            "an altered token was accepted (byte {at})"
        );
    }
}

/// Decodes a stream of client↔worker frames; each decoded frame encodes back to the bytes
/// it came from.
pub fn frames(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = Frame::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(
            frame.to_vec(),
            rest[..used],
            "{frame:?} re-encodes differently"
        );
        rest = &rest[used..];
    }
}

/// Decodes worker↔controller frames both ways and activation tokens; what decodes survives
/// a round trip.
pub fn cluster_frames(data: &[u8]) {
    fn round_trip<T>(data: &[u8])
    where
        T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let mut rest = data;
        while let Ok(Some((msg, used))) = cluster::decode::<T>(rest) {
            assert!(used > 0 && used <= rest.len());
            let bytes = cluster::encode(&msg);
            let (again, n) = cluster::decode::<T>(&bytes)
                .expect("own encoding decodes")
                .expect("own encoding is whole");
            assert_eq!(n, bytes.len());
            assert_eq!(again, msg);
            rest = &rest[used..];
        }
    }
    round_trip::<ToController>(data);
    round_trip::<ToWorker>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = ActivationToken::decode(text) {
            assert!(ActivationToken::decode(&t.encode()).ok() == Some(t));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The committed seed corpora (`fuzz/corpus/<target>/`) are written by this test with
    //! `SLUICE_WRITE_FUZZ_SEEDS=$PWD/fuzz/corpus`, and checked by it otherwise: each seed must
    //! still be what it claims (a valid frame, message or token), so a format change that
    //! leaves the corpora stale fails here.

    use super::*;
    use crate::cluster::WorkerEvent;
    use crate::token::AuthzToken;
    use crate::{ConnectionClosedReason, Refusal, RefusalKind, TerminationReason};

    fn claims() -> AuthzToken {
        AuthzToken {
            session_id: "s_h7vBIhH5SZ".into(),
            target_id: "ttcp_1234567890".into(),
            user_id: "u_1234567890".into(),
            host_id: "hst_1234567890".into(),
            endpoint: "localhost:22".into(),
            issued_at: 1_700_000_000,
            expires_at: 1_700_028_800,
            connection_limit: 1,
            worker_id: "w_1234567890".into(),
            worker_addr: "127.0.0.1:9202".into(),
            ca_fingerprint: [9u8; 32],
        }
    }

    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        // Signed by a key other than the fuzz key: the target signs again itself.
        let signer = TokenSigner::from_seed(&[7u8; 32]);
        let token = crate::token::text_to_binary(&signer.sign(&claims()).unwrap()).unwrap();
        let mut verify = Vec::new();
        for (now, pick) in [
            (1_700_000_100u64, 0u8),
            (1_800_000_000, 0),
            (1_700_000_100, 1),
        ] {
            let mut s = now.to_be_bytes().to_vec();
            s.push(pick);
            s.extend_from_slice(&token);
            verify.push(s);
        }
        let nonce = [3u8; crate::frames::NONCE_LEN];
        let frames = [
            Frame::ClientHello {
                nonce,
                token: token.clone(),
            },
            Frame::HelloAccepted {
                connections_left: -1,
                expires_at: 1_700_028_800,
            },
            Frame::StreamOpen,
            Frame::StreamAccepted {
                connections_left: 4,
            },
            Frame::Refused(Refusal::new(
                RefusalKind::Expired,
                "session s_h7vBIhH5SZ has expired; authorize a new one",
            )),
            Frame::StreamHello {
                nonce,
                token: token.clone(),
            },
            Frame::SessionEnded(TerminationReason::Canceled),
        ];
        let to_controller = [
            ToController::Activate {
                activation_token: "neslat_2bK9".into(),
                public_key: vec![4; 65],
            },
            ToController::Hello {
                worker_id: "w_1234567890".into(),
                boot_id: 42,
                address: "127.0.0.1:9202".into(),
                tags: [("env".to_owned(), vec!["prod".to_owned()])].into(),
                version: "0.1.0".into(),
            },
            ToController::Events {
                batch: 7,
                events: vec![
                    WorkerEvent::SessionActivated {
                        session_id: "s_h7vBIhH5SZ".into(),
                        at_ms: 1,
                    },
                    WorkerEvent::ConnectionClosed {
                        session_id: "s_h7vBIhH5SZ".into(),
                        connection_id: "sc_1".into(),
                        bytes_up: 10,
                        bytes_down: 20,
                        reason: ConnectionClosedReason::ClosedByEndUser,
                        at_ms: 2,
                    },
                ],
            },
            ToController::Heartbeat,
        ];
        let to_worker = [
            ToWorker::Welcome {
                keys: vec![vec![1; 32]],
                cancels: vec![("s_h7vBIhH5SZ".into(), 1_700_028_800)],
                heartbeat_ms: 2_000,
            },
            ToWorker::Cancel {
                session_id: "s_h7vBIhH5SZ".into(),
                expires_at: 1_700_028_800,
            },
            ToWorker::Ack { batch: 7 },
            ToWorker::Refused {
                message: "worker w_1 was deleted".into(),
            },
        ];
        let mut out = Vec::new();
        for (i, s) in verify.into_iter().enumerate() {
            out.push(("token_verify", ["valid", "expired", "other_worker"][i], s));
        }
        let names = [
            "client_hello",
            "hello_accepted",
            "stream_open",
            "stream_accepted",
            "refused",
            "stream_hello",
            "session_ended",
        ];
        let mut all = Vec::new();
        for (f, name) in frames.iter().zip(names) {
            all.extend(f.to_vec());
            out.push(("frames", name, f.to_vec()));
        }
        out.push(("frames", "sequence", all));
        let names = ["activate", "hello", "events", "heartbeat"];
        for (m, name) in to_controller.iter().zip(names) {
            out.push(("cluster_frames", name, cluster::encode(m)));
        }
        let names = ["welcome", "cancel", "ack", "refused"];
        for (m, name) in to_worker.iter().zip(names) {
            out.push(("cluster_frames", name, cluster::encode(m)));
        }
        let activation = ActivationToken {
            worker_id: "w_1234567890".into(),
            secret: [5; 32],
            ca_fingerprint: [6; 32],
        };
        out.push((
            "cluster_frames",
            "activation_token",
            activation.encode().into_bytes(),
        ));
        out
    }

    #[test]
    fn committed_seed_corpora_are_current_and_pass_their_targets() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus");
        let write = std::env::var("SLUICE_WRITE_FUZZ_SEEDS").ok();
        for (target, name, bytes) in seeds() {
            let path = format!("{}/{target}/seed_{name}", write.as_deref().unwrap_or(root));
            if write.is_some() {
                std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(committed, bytes, "{path} is stale: regenerate the seeds");
            match target {
                "token_verify" => token_verify(&committed),
                "frames" => frames(&committed),
                _ => cluster_frames(&committed),
            }
        }
    }

    #[test]
    fn the_targets_take_garbage_and_truncations_without_panicking() {
        for (_, _, bytes) in seeds() {
            for cut in 0..bytes.len() {
                token_decode(&bytes[..cut]);
                token_verify(&bytes[..cut]);
                frames(&bytes[..cut]);
                cluster_frames(&bytes[..cut]);
            }
        }
    }
}
