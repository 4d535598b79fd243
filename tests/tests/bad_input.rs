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

/// A TLS or QUIC client that does not speak `sluice/1` (a browser, curl, an HTTP/3 probe) is
/// refused during the handshake with TLS's `no_application_protocol` alert, which its library
/// reports by name; garbage and truncated QUIC packets are dropped; and the worker goes on
/// serving real sessions.
#[test]
fn the_worker_refuses_unknown_alpn_and_malformed_quic() {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    // A target that echoes, so that "still serves" means bytes went through the worker.
    let echo_port = sluice_e2e::echo_target().to_string();
    let dev = Dev::start(&[
        "-host-address",
        "127.0.0.1",
        "-target-default-port",
        &echo_port,
    ]);
    let worker: SocketAddr = Dev::field(&dev.proc.stdout(), "Worker Proxy Address")
        .unwrap()
        .parse()
        .unwrap();
    let authz: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        "ttcp_1234567890",
        "-format",
        "json",
    ]))
    .unwrap();
    let token = authz["item"]["authorization_token"].as_str().unwrap();
    let pin = sluice_proto::token::SignedToken::decode(token)
        .unwrap()
        .unverified()
        .ca_fingerprint;
    let before = stored(&dev);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls_with = |alpn: &[&[u8]]| {
        let mut tls = sluice_dataplane::tls::rustls_client_config(pin).unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tls
    };
    let name =
        rustls::pki_types::ServerName::try_from(sluice_dataplane::tls::WORKER_SERVER_NAME).unwrap();

    // QUIC, offering HTTP/3 and then nothing at all.
    for alpn in [&[&b"h3"[..]][..], &[]] {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_with(alpn)).unwrap();
        let err = rt.block_on(async {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let connecting = endpoint
                .connect_with(
                    quinn::ClientConfig::new(Arc::new(quic)),
                    worker,
                    sluice_dataplane::tls::WORKER_SERVER_NAME,
                )
                .unwrap();
            let res = tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .expect("the worker answers a QUIC handshake at once");
            res.err()
        });
        let err = err.unwrap_or_else(|| panic!("a QUIC handshake offering {alpn:?} was accepted"));
        assert!(
            err.to_string()
                .contains("doesn't support any known protocol"),
            "QUIC offering {alpn:?}: {err}"
        );
    }

    // TLS over TCP, offering HTTP/2 and HTTP/1.1 as curl does.
    let err = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(worker).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_with(&[b"h2", b"http/1.1"])));
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp))
            .await
            .expect("the worker answers a TLS handshake at once")
            .err()
    });
    let err = err.expect("a TLS handshake offering h2 and http/1.1 was accepted");
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "TLS offering h2: {err}"
    );

    // Malformed QUIC: random bytes, a long-header Initial of version 1 whose payload is
    // garbage, a truncated header, an empty datagram, and an unknown version (answered with
    // version negotiation, which names version 1).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
    initial.extend_from_slice(&rand::random::<[u8; 8]>());
    initial.push(8);
    initial.extend_from_slice(&rand::random::<[u8; 8]>());
    initial.extend_from_slice(&[0, 0x44, 0xd0]);
    initial.resize(1200, 0);
    rand::Rng::fill(&mut rand::thread_rng(), &mut initial[30..]);
    let random: Vec<u8> = (0..1200).map(|_| rand::random()).collect();
    for packet in [&random[..], &initial, &initial[..9], &[]] {
        udp.send_to(packet, worker).unwrap();
    }
    let mut unknown = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    unknown.extend_from_slice(&[7; 8]);
    unknown.push(8);
    unknown.extend_from_slice(&[9; 8]);
    unknown.resize(1200, 0);
    udp.send_to(&unknown, worker).unwrap();
    let mut answer = [0u8; 1500];
    let (n, _) = udp
        .recv_from(&mut answer)
        .expect("the worker answers an unknown QUIC version");
    let answer = &answer[..n];
    assert_eq!(&answer[1..5], &[0, 0, 0, 0], "not a version negotiation");
    assert!(
        answer[6..].windows(4).any(|v| v == [0, 0, 0, 1]),
        "version negotiation does not offer QUIC v1: {answer:?}"
    );

    // Nothing changed, nothing panicked, and a real session still carries bytes.
    assert_eq!(stored(&dev), before);
    let conn = sluice_e2e::Connect::start(&dev, &["connect", "-target-id", "ttcp_1234567890"]);
    let mut s = TcpStream::connect(("127.0.0.1", conn.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"still serving").unwrap();
    let mut back = [0u8; 13];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still serving");
    assert!(
        !dev.proc.stderr().contains("panicked"),
        "{}",
        dev.proc.stderr()
    );
}
