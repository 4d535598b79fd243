//! Bad input, one row per case: each is refused with a clear error, nothing panics, and what
//! is stored stays as it was. The API is driven with raw HTTP (so malformed requests reach it
//! as sent); the worker with raw TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice_e2e::Dev;

const PROJECT: &str = "p_1234567890";

fn http(api: &str, method: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> (u16, String) {
    sluice_e2e::http_request(api, method, path, bearer, body).expect("the API answers")
}

fn stored(dev: &Dev) -> String {
    let mut all = String::new();
    for args in [
        &["targets", "list", "-scope-id", PROJECT, "-format", "json"][..],
        &[
            "host-catalogs",
            "list",
            "-scope-id",
            PROJECT,
            "-format",
            "json",
        ][..],
        &["scopes", "list", "-recursive", "-format", "json"][..],
        &["users", "list", "-format", "json"][..],
        &["sessions", "list", "-scope-id", PROJECT, "-format", "json"][..],
    ] {
        all.push_str(&dev.ok(args));
    }
    all
}

#[test]
fn the_api_refuses_each_bad_request_clearly_and_changes_nothing() {
    let dev = Dev::start(&[]);
    let admin = dev.login_token("admin", "password");
    let user = dev.login_token("user", "password");
    let out = dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        "ttcp_1234567890",
        "-format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let admin_session = v["item"]["session_id"].as_str().unwrap().to_owned();
    let before = stored(&dev);
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(3 << 20));
    let target = "/v1/targets/ttcp_1234567890";
    let session_path = format!("/v1/sessions/{admin_session}");
    let cancel_path = format!("/v1/sessions/{admin_session}:cancel");
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [u8],
        u16,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        ("malformed JSON", "POST", "/v1/targets", Some(&admin), b"{\"scope_id\":", 400, "not valid"),
        ("wrong type", "POST", "/v1/targets", Some(&admin),
         br#"{"scope_id":"p_1234567890","name":"t","attributes":{"default_port":"22"}}"#, 400, "invalid type"),
        ("unknown field", "POST", "/v1/targets", Some(&admin),
         br#"{"scope_id":"p_1234567890","name":"t","colour":"red","attributes":{"default_port":22}}"#, 400, "unknown field"),
        ("oversized body", "POST", "/v1/targets", Some(&admin), big.as_bytes(), 413, "too large"),
        ("unknown id", "GET", "/v1/targets/ttcp_nothere000", Some(&admin), b"", 404, "not found"),
        ("unknown path", "GET", "/v1/nothing", Some(&admin), b"", 404, "no such API path"),
        ("missing auth", "GET", "/v1/targets?scope_id=p_1234567890", None, b"", 401, "sluice authenticate password"),
        ("garbage auth token", "GET", "/v1/targets?scope_id=p_1234567890", Some("at_garbage"), b"", 401, "invalid or has expired"),
        ("wrong password", "POST", "/v1/auth-methods/ampw_1234567890:authenticate", None,
         br#"{"attributes":{"login_name":"admin","password":"nope"}}"#, 401, "wrong login name or password"),
        ("another user's session", "GET", &session_path, Some(&user), b"", 403, "belongs to another user"),
        ("cancel another user's session", "POST", &cancel_path, Some(&user), b"{}", 403, "belongs to another user"),
        ("non-admin create", "POST", "/v1/targets", Some(&user),
         br#"{"scope_id":"p_1234567890","name":"t","attributes":{"default_port":22}}"#, 403, "only an administrator"),
        ("stale version", "PATCH", target, Some(&admin), br#"{"version":99,"name":"n"}"#, 409, "not 99"),
        ("port in a host address", "POST", "/v1/hosts", Some(&admin),
         br#"{"host_catalog_id":"hcst_1234567890","type":"static","attributes":{"address":"10.0.0.1:22"}}"#, 400, "without a port"),
        ("no default port", "POST", "/v1/targets", Some(&admin),
         br#"{"scope_id":"p_1234567890","name":"noport"}"#, 400, "default port"),
        ("bad worker filter", "PATCH", target, Some(&admin),
         br#"{"version":1,"egress_worker_filter":"\"a\" in"}"#, 400, "egress_worker_filter is invalid"),
        ("negative limit", "POST", "/v1/targets", Some(&admin),
         br#"{"scope_id":"p_1234567890","name":"neg","session_connection_limit":-5,"attributes":{"default_port":22}}"#, 400, "session_connection_limit"),
        ("scope in a project", "POST", "/v1/scopes", Some(&admin),
         br#"{"scope_id":"p_1234567890","name":"x"}"#, 400, "projects hold no scopes"),
        ("body that is not JSON at all", "POST", "/v1/scopes", Some(&admin), b"\xff\xfe\x00garbage", 400, "not UTF-8"),
    ];
    for (what, method, path, auth, body, want, msg) in rows {
        let (status, body) = http(&dev.api, method, path, auth, body);
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.contains(msg), "{what}: wanted {msg:?} in {body}");
        if want != 413 {
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: the error is not JSON ({e}): {body}"));
            assert!(
                v["kind"].is_string() && v["message"].is_string(),
                "{what}: {v}"
            );
        }
    }
    // A target with an address cannot take host sources as well.
    let (status, body) = http(
        &dev.api,
        "POST",
        "/v1/targets/ttcp_0987654321:add-host-sources",
        Some(&admin),
        br#"{"version":1,"host_source_ids":["hsst_1234567890"]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("address"), "{body}");

    // Nothing above changed what is stored, and the controller still serves.
    assert_eq!(stored(&dev), before);
    assert!(
        dev.proc.stderr().matches("panicked").count() == 0,
        "{}",
        dev.proc.stderr()
    );
}

#[test]
fn the_worker_closes_silent_slow_and_garbage_clients() {
    let dev = Dev::start(&[]);
    let worker = Dev::field(&dev.proc.stdout(), "Worker Proxy Address").unwrap();
    let started = Instant::now();
    // Connects and sends nothing.
    let silent = std::thread::spawn({
        let worker = worker.clone();
        move || {
            let mut s = TcpStream::connect(&worker).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut b = [0u8; 64];
            let n = s.read(&mut b).unwrap_or(0);
            (n, Instant::now())
        }
    });
    // Sends one byte a second (slowloris): the handshake deadline is absolute.
    let slow = std::thread::spawn({
        let worker = worker.clone();
        move || {
            let mut s = TcpStream::connect(&worker).unwrap();
            for b in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                .iter()
                .cycle()
                .take(40)
            {
                if s.write_all(&[*b]).is_err() {
                    return Instant::now();
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            panic!("the worker let a slowloris client trickle for 40 s");
        }
    });
    // A malformed TLS handshake is closed at once.
    let mut g = TcpStream::connect(&worker).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(b"\x16\x03\x01\x00\x05garbagegarbagegarbage")
        .unwrap();
    let t = Instant::now();
    let mut b = [0u8; 256];
    while let Ok(n) = g.read(&mut b) {
        if n == 0 {
            break;
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a garbage handshake was kept open"
    );

    let (_, silent_closed) = silent.join().unwrap();
    let slow_closed = slow.join().unwrap();
    for (what, at) in [("silent", silent_closed), ("slowloris", slow_closed)] {
        let after = at - started;
        assert!(
            after >= Duration::from_secs(8) && after < Duration::from_secs(20),
            "{what} client closed after {after:?}; the handshake limit is 10 s"
        );
    }
    // The worker still serves: a real session works afterwards.
    dev.ok(&["targets", "authorize-session", "-id", "ttcp_1234567890"]);
    assert!(
        !dev.proc.stderr().contains("panicked"),
        "{}",
        dev.proc.stderr()
    );
}

/// Bad command lines and secret references: each exits non-zero with a message naming the
/// problem, never a panic, and changes nothing stored.
#[test]
fn the_cli_refuses_bad_flags_and_references_clearly() {
    let dev = Dev::start(&[]);
    let before = stored(&dev);
    let missing = tempfile::tempdir().unwrap().path().join("no-such-file");
    let missing_ref = format!("file://{}", missing.display());
    let rows: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["targets", "list", "-no-such-flag"],
            "unexpected argument",
        ),
        (vec!["targets", "read"], "required"),
        (
            vec![
                "targets",
                "update",
                "tcp",
                "-id",
                "ttcp_1234567890",
                "-version",
                "abc",
            ],
            "invalid value",
        ),
        (
            vec![
                "connect",
                "-target-id",
                "ttcp_1234567890",
                "-transport",
                "pigeon",
            ],
            "invalid value",
        ),
        (
            vec![
                "connect",
                "-target-id",
                "ttcp_1234567890",
                "-listen-port",
                "70000",
            ],
            "invalid value",
        ),
        (vec!["no-such-command"], "unrecognized subcommand"),
        (
            vec![
                "authenticate",
                "password",
                "-login-name",
                "admin",
                "-password",
                "env://SLUICE_E2E_UNSET",
            ],
            "environment variable SLUICE_E2E_UNSET, which is not set",
        ),
        (
            vec![
                "authenticate",
                "password",
                "-login-name",
                "admin",
                "-password",
                &missing_ref,
            ],
            "which could not be read",
        ),
        (
            vec![
                "accounts",
                "create",
                "password",
                "-login-name",
                "x-user",
                "-password",
                "env://SLUICE_E2E_UNSET",
            ],
            "which is not set",
        ),
        (
            vec!["sessions", "read", "-id", "s_doesnotexist"],
            "not found",
        ),
    ];
    for (args, want) in rows {
        let out = dev.sluice(&args);
        let err = sluice_e2e::text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: wanted {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
    assert_eq!(
        stored(&dev),
        before,
        "a refused command changed stored state"
    );
}
