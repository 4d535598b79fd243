//! Crashes under load: what the controller acknowledged survives `kill -9`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_e2e::{http_request, wait_for, Dev};

#[test]
fn a_controller_killed_during_1000_concurrent_authorizations_keeps_every_acknowledged_session() {
    let data = sluice_e2e::private_tempdir();
    let data_dir = data.path().display().to_string();
    let proxy = format!("127.0.0.1:{}", sluice_e2e::free_udp_port());
    let mut dev = Dev::start(&["-data-dir", &data_dir, "-proxy-addr", &proxy]);
    let bearer = dev.login_token("admin", "password");

    // 1,000 clients authorize as fast as they can; each keeps the ids it got a 200 for.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let (api, bearer, acked, stop) =
                (dev.api.clone(), bearer.clone(), acked.clone(), stop.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((status, body)) = http_request(
                            &api,
                            "POST",
                            "/v1/targets/ttcp_1234567890:authorize-session",
                            Some(&bearer),
                            b"{}",
                        ) else {
                            return;
                        };
                        if status != 200 {
                            return;
                        }
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let id = v["item"]["session_id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push(id);
                    }
                })
                .unwrap()
        })
        .collect();
    wait_for(
        "3,000 acknowledged authorizations",
        Duration::from_secs(120),
        || (acked.lock().unwrap().len() >= 3000).then_some(()),
    );
    let _ = dev.proc.child.kill(); // SIGKILL, mid-flight
    let _ = dev.proc.child.wait();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // The restarted controller opens the store (a half-written record would stop it) and
    // has every acknowledged session.
    let home = std::mem::replace(&mut dev.home, tempfile::tempdir().unwrap());
    drop(dev);
    let dev = Dev::start_in(home, &["-data-dir", &data_dir, "-proxy-addr", &proxy]);
    let out = dev.ok(&[
        "sessions",
        "list",
        "-scope-id",
        "p_1234567890",
        "-include-terminated",
        "-format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stored: std::collections::HashMap<String, serde_json::Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s.clone()))
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sessions were lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for id in &acked {
        let s = &stored[id];
        assert!(
            s["states"].as_array().is_some_and(|st| !st.is_empty()) && s["status"].is_string(),
            "{id} is incomplete: {s}"
        );
    }
}
