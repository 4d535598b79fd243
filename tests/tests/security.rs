//! Secrets stay out of logs: a full run (server, worker, connect, ssh through it) with
//! distinctive passwords and tokens, then every line each process wrote is searched for them.

use std::time::Duration;

use sluice_e2e::{text, Connect, Dev, Proc, ServerSetup, Sshd, WorkerProc};

const TARGET: &str = "ttcp_1234567890";
const PASSWORD: &str = "Kx7-dora-passphrase-93q";
const WRONG_PASSWORD: &str = "Wv2-not-doras-pass-51z";

fn id_of(out: &str) -> String {
    Dev::field(out, "ID").unwrap_or_else(|| panic!("no ID in:\n{out}"))
}

#[test]
fn no_token_or_password_used_in_a_full_run_appears_in_any_log() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (_, activation) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&activation), &[]);

    // A user with a distinctive password; one failed and one good login.
    let account = id_of(&dev.ok(&[
        "accounts",
        "create",
        "password",
        "-login-name",
        "dora",
        "-password",
        PASSWORD,
    ]));
    let user = id_of(&dev.ok(&["users", "create", "-name", "dora"]));
    dev.ok(&["users", "add-accounts", "-id", &user, "-account", &account]);
    let login = |pw: &str| {
        dev.sluice(&[
            "authenticate",
            "password",
            "-login-name",
            "dora",
            "-password",
            pw,
            "-format",
            "json",
        ])
    };
    assert!(!login(WRONG_PASSWORD).status.success());
    let out = login(PASSWORD);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let bearer = v["attributes"]["token"].as_str().unwrap().to_owned();

    // A session by authorization token, used by ssh; one forged token refused.
    let out = dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        TARGET,
        "-format",
        "json",
        "-token",
        &bearer,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let authz = v["item"]["authorization_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut conn = Connect::start(&dev, &["connect", "-authz-token", &authz]);
    let out = sshd.ssh(conn.port, "echo through").output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "through", "{}", text(&out.stderr));
    // Change one character inside the signature (the token's last 86 characters). Not the
    // last one: its low bits are padding, and a change there can make the text invalid
    // base64url (a different refusal) instead of a forgery.
    let mut chars: Vec<char> = authz.chars().collect();
    let at = chars.len() - 10;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    let mut bad = Proc::spawn(dev.cmd(&["connect", "-authz-token", &forged]));
    assert!(!bad.wait(Duration::from_secs(30)).success());
    dev.ok(&["sessions", "cancel", "-id", &conn.session_id]);
    conn.proc.wait(Duration::from_secs(15));
    dev.ok(&["logout", "-token", &bearer]);

    // Every secret, whole and in the parts a log line might carry.
    let bearer_secret = bearer[14..].to_owned();
    let authz_body = authz.trim_start_matches("s1_").to_owned();
    let activation_body = activation.trim_start_matches("neslat_").to_owned();
    let secrets = [
        ("password", PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("auth token secret", bearer_secret.as_str()),
        ("authorization token", authz_body.as_str()),
        (
            "forged authorization token",
            forged.trim_start_matches("s1_"),
        ),
        ("activation token", activation_body.as_str()),
    ];
    worker.proc.stop();
    let mut dev = dev;
    let logs = [
        ("server", dev.proc.stdout() + &dev.proc.stderr()),
        ("worker", worker.proc.stdout() + &worker.proc.stderr()),
        ("connect", conn.proc.stdout() + &conn.proc.stderr()),
        ("refused connect", bad.stdout() + &bad.stderr()),
    ];
    dev.stop();
    for (who, log) in &logs {
        assert!(!log.trim().is_empty(), "{who} logged nothing");
        for (what, secret) in secrets {
            // A 16-character window catches a secret even when a line holds only part of it.
            assert!(secret.len() >= 16, "{what} is too short to search for");
            for start in (0..=secret.len() - 16).step_by(4) {
                let piece = &secret[start..start + 16];
                assert!(
                    !log.contains(piece),
                    "the {who} log holds part of the {what}:\n{log}"
                );
            }
        }
    }
    // The processes did log the logins, the session and the refusal, so the search covered
    // real lines.
    assert!(logs[0].1.contains("authenticated"), "{}", logs[0].1);
    assert!(logs[1].1.contains(&conn.session_id), "{}", logs[1].1);
    assert!(logs[3].1.contains("forged or altered"), "{}", logs[3].1);
}

#[test]
fn repeated_wrong_passwords_lock_that_login_name_for_a_while() {
    let dev = Dev::start(&[]);
    let login = |name: &str, pw: &str| {
        dev.sluice(&[
            "authenticate",
            "password",
            "-login-name",
            name,
            "-password",
            pw,
            "-format",
            "json",
        ])
    };
    for _ in 0..5 {
        let out = login("admin", WRONG_PASSWORD);
        assert!(
            text(&out.stderr).contains("wrong login name or password"),
            "{}",
            text(&out.stderr)
        );
    }
    // Now even the right password is refused, with how long to wait.
    let out = login("admin", "password");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("too many failed attempts") && err.contains("try again in"),
        "{err}"
    );
    // Other login names are not affected, and the stored auth token still works.
    let out = login("user", "password");
    assert!(out.status.success(), "{}", text(&out.stderr));
    dev.ok(&["targets", "list", "-scope-id", "p_1234567890"]);
}

/// The mode bits of `p` (permissions only).
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &std::path::Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs `cmd`, which must exit (within 30 s) with an error, and returns its stderr.
fn refused(cmd: std::process::Command) -> String {
    let mut p = Proc::spawn(cmd);
    let status = p.wait(Duration::from_secs(30));
    assert!(!status.success(), "it started:\n{}", p.stdout());
    p.stderr()
}

#[test]
fn the_store_its_directory_and_the_stored_token_are_owner_only_and_open_ones_are_refused() {
    let setup = ServerSetup::new(22);
    let mut dev = Dev::server(&setup);
    let store = setup.store_dir();
    let redb = store.join("sluice.redb");
    assert_eq!(mode(&store), 0o700, "the data directory");
    assert_eq!(mode(&redb), 0o600, "the store, which holds the keys");
    let token = dev.home.path().join(".config/sluice/token");
    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(token.parent().unwrap()), 0o700);
    dev.stop();

    // A store, or its directory, that other users can read is refused, naming it and the fix;
    // nothing is changed in it.
    let home = tempfile::tempdir().unwrap();
    chmod(&redb, 0o644);
    let err = refused(setup.command(home.path()));
    assert!(
        err.contains(&redb.display().to_string())
            && err.contains("mode 0644")
            && err.contains("chmod 600"),
        "{err}"
    );
    chmod(&redb, 0o600);
    chmod(&store, 0o755);
    let err = refused(setup.command(home.path()));
    assert!(
        err.contains(&store.display().to_string()) && err.contains("chmod 700"),
        "{err}"
    );
    chmod(&store, 0o700);
    dev.restart_server(&setup);
    dev.ok(&["targets", "list", "-scope-id", "p_1234567890"]);

    // The CLI does not use a stored token others can read.
    chmod(&token, 0o644);
    let out = dev.sluice(&["targets", "list", "-scope-id", "p_1234567890"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    chmod(&token, 0o600);
    dev.stop();

    // `sluice dev -data-dir` holds the same keys.
    let open = tempfile::tempdir().unwrap();
    chmod(open.path(), 0o755);
    let mut cmd = std::process::Command::new(sluice_e2e::sluice_bin());
    cmd.args([
        "dev",
        "-api-addr",
        "127.0.0.1:0",
        "-proxy-addr",
        "127.0.0.1:0",
    ])
    .arg("-data-dir")
    .arg(open.path());
    let err = refused(cmd);
    assert!(err.contains("open to other users"), "{err}");

    // So does a worker's auth_storage_path (its identity and kept keys).
    let mut cmd = std::process::Command::new(sluice_e2e::sluice_bin());
    cmd.args([
        "worker",
        "-proxy-addr",
        "127.0.0.1:0",
        "-initial-upstream",
        "127.0.0.1:1",
    ])
    .arg("-auth-storage-path")
    .arg(open.path())
    .args(["-activation-token", "neslat_unused"]);
    let err = refused(cmd);
    assert!(
        err.contains("auth_storage_path") && err.contains("chmod 700"),
        "{err}"
    );
}

#[test]
fn a_truncated_store_is_refused_not_started_afresh() {
    let setup = ServerSetup::new(22);
    let mut dev = Dev::server(&setup);
    // Something a restart must keep: a scope created after the first start.
    let org = id_of(&dev.ok(&["scopes", "create", "-scope-id", "global", "-name", "kept"]));
    dev.stop();
    let redb = setup.store_dir().join("sluice.redb");
    let backup = std::fs::read(&redb).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&redb)
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = refused(setup.command(tempfile::tempdir().unwrap().path()));
    assert!(
        err.contains(&redb.display().to_string())
            && err.contains("empty (0 bytes)")
            && err.contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&redb).unwrap().len(),
        0,
        "not re-initialised"
    );
    // Restored, it starts with everything in it.
    std::fs::write(&redb, backup).unwrap();
    dev.restart_server(&setup);
    dev.ok(&["scopes", "read", "-id", &org]);
}

#[test]
fn a_second_worker_on_the_same_port_fails_at_once_and_the_first_keeps_it() {
    let echo = sluice_e2e::echo_target();
    let port = echo.to_string();
    let dev = Dev::start(&["-host-address", "127.0.0.1", "-target-default-port", &port]);
    let proxy = Dev::field(&dev.proc.stdout(), "Worker Proxy Address").expect("proxy address");
    let second = || {
        let mut cmd = std::process::Command::new(sluice_e2e::sluice_bin());
        cmd.args(["dev", "-api-addr", "127.0.0.1:0", "-proxy-addr", &proxy]);
        cmd
    };
    let err = refused(second());
    assert!(
        err.contains("address in use") && err.contains(&proxy),
        "{err}"
    );
    // Every new connection still reaches the first worker (a stolen share would fail its
    // handshake against the second one's certificate).
    for _ in 0..8 {
        let mut conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", conn.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut tcp, b"ping").unwrap();
        let mut back = [0u8; 4];
        std::io::Read::read_exact(&mut tcp, &mut back).unwrap();
        assert_eq!(&back, b"ping");
        conn.proc.stop();
    }
}

#[test]
fn a_burst_of_parallel_guesses_gets_at_most_five_password_checks() {
    let dev = Dev::start(&[]);
    let body = |pw: &str| {
        format!(r#"{{"command":"login","attributes":{{"login_name":"user","password":"{pw}"}}}}"#)
    };
    let path = "/v1/auth-methods/ampw_1234567890:authenticate";
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(150));
    let guesses: Vec<_> = (0..150)
        .map(|i| {
            let api = dev.api.clone();
            let barrier = barrier.clone();
            // The right password is among the guesses, late.
            let pw = if i == 140 { "password" } else { WRONG_PASSWORD };
            let body = body(pw);
            std::thread::spawn(move || {
                barrier.wait();
                sluice_e2e::http_request(&api, "POST", path, None, body.as_bytes())
                    .expect("the API answers")
                    .0
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    let checked = statuses.iter().filter(|s| **s != 429).count();
    assert!(
        statuses.iter().all(|s| [200, 401, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(
        (1..=5).contains(&checked),
        "{checked} guesses were checked, at most 5 may be: {statuses:?}"
    );
    // Unless the right one was among the five checked, the name stays locked, right
    // password included.
    if !statuses.contains(&200) {
        let (status, body) =
            sluice_e2e::http_request(&dev.api, "POST", path, None, body("password").as_bytes())
                .unwrap();
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("try again in"), "{body}");
    }
}

#[test]
fn a_user_confined_to_one_project_reads_nothing_of_another() {
    const PROJECT: &str = "p_1234567890";
    let dev = Dev::start(&[]);
    let other = id_of(&dev.ok(&[
        "scopes",
        "create",
        "-scope-id",
        "o_1234567890",
        "-name",
        "other",
    ]));
    let cat = id_of(&dev.ok(&[
        "host-catalogs",
        "create",
        "static",
        "-scope-id",
        &other,
        "-name",
        "c",
    ]));
    let host = id_of(&dev.ok(&[
        "hosts",
        "create",
        "static",
        "-host-catalog-id",
        &cat,
        "-address",
        "10.77.0.9",
    ]));
    let set = id_of(&dev.ok(&[
        "host-sets",
        "create",
        "static",
        "-host-catalog-id",
        &cat,
        "-name",
        "s",
    ]));
    dev.ok(&["host-sets", "add-hosts", "-id", &set, "-host", &host]);
    let target = id_of(&dev.ok(&[
        "targets",
        "create",
        "tcp",
        "-scope-id",
        &other,
        "-name",
        "t",
        "-default-port",
        "22",
    ]));
    // A second org with a project of its own, which the user is not given either.
    let org2 = id_of(&dev.ok(&["scopes", "create", "-scope-id", "global", "-name", "org2"]));
    dev.ok(&["scopes", "create", "-scope-id", &org2, "-name", "p2"]);
    let account = id_of(&dev.ok(&[
        "accounts",
        "create",
        "password",
        "-login-name",
        "carol",
        "-password",
        PASSWORD,
    ]));
    let carol = id_of(&dev.ok(&["users", "create", "-name", "carol", "-project-id", PROJECT]));
    dev.ok(&["users", "add-accounts", "-id", &carol, "-account", &account]);
    let token = dev.login_token("carol", PASSWORD);
    let as_carol = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["-token", token.as_str(), "-format", "json"]);
        dev.sluice(&a)
    };
    let items = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = as_carol(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let ids = |args: &[&str]| -> Vec<String> {
        items(args)
            .iter()
            .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // Lists of the other project are empty; of her own, full.
    for (list, own) in [
        (vec!["targets", "list", "-scope-id"], PROJECT),
        (vec!["host-catalogs", "list", "-scope-id"], PROJECT),
    ] {
        let mut theirs = list.clone();
        theirs.push(&other);
        assert!(ids(&theirs).is_empty(), "{theirs:?}");
        let mut mine = list.clone();
        mine.push(own);
        assert!(!ids(&mine).is_empty(), "{mine:?}");
    }
    for list in [
        ["hosts", "list", "-host-catalog-id"],
        ["host-sets", "list", "-host-catalog-id"],
    ] {
        let mut theirs = list.to_vec();
        theirs.push(&cat);
        assert!(ids(&theirs).is_empty(), "{theirs:?}");
        let mut mine = list.to_vec();
        mine.push("hcst_1234567890");
        assert!(!ids(&mine).is_empty(), "{mine:?}");
    }
    let sessions = as_carol(&["sessions", "list", "-scope-id", &other]);
    assert!(sessions.status.success(), "{}", text(&sessions.stderr));
    // Scopes: her project and its org, nothing else.
    let projects = ids(&["scopes", "list", "-scope-id", "o_1234567890"]);
    assert_eq!(projects, vec![PROJECT.to_owned()]);
    assert_eq!(ids(&["scopes", "list"]), vec!["o_1234567890".to_owned()]);
    let all = ids(&["scopes", "list", "-recursive"]);
    assert!(
        all.contains(&PROJECT.to_owned()) && !all.contains(&other),
        "{all:?}"
    );

    // Reads of the other project's resources are refused, and show nothing of them.
    for (kind, id) in [
        ("targets", &target),
        ("host-catalogs", &cat),
        ("hosts", &host),
        ("host-sets", &set),
        ("scopes", &other),
        ("scopes", &org2),
    ] {
        let out = as_carol(&[kind, "read", "-id", id]);
        assert!(!out.status.success(), "{kind} read {id} was allowed");
        let err = text(&out.stderr);
        assert!(
            err.contains("HTTP 403") && err.contains(&carol),
            "{kind}: {err}"
        );
        assert!(
            !err.contains("10.77.0.9") && text(&out.stdout).is_empty(),
            "{err}"
        );
    }
    for (kind, id) in [
        ("targets", TARGET),
        ("host-catalogs", "hcst_1234567890"),
        ("hosts", "hst_1234567890"),
        ("host-sets", "hsst_1234567890"),
        ("scopes", PROJECT),
        ("scopes", "o_1234567890"),
    ] {
        let out = as_carol(&[kind, "read", "-id", id]);
        assert!(out.status.success(), "{kind} {id}: {}", text(&out.stderr));
    }
    // And the session routes: authorizing the other project's target is refused.
    let out = as_carol(&["targets", "authorize-session", "-id", &target]);
    assert!(
        text(&out.stderr).contains("has not been given"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_cli_takes_no_answer_but_the_controllers_for_done() {
    // A web server on the port the CLI was pointed at: it answers every request with a page.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let page = "<html><body><h1>Welcome to nginx!</h1></body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(sluice_e2e::sluice_bin());
        cmd.args(args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("SLUICE_ADDR", &addr)
            .env("SLUICE_TOKEN", "at_1234567890_notatoken")
            .env("SLUICE_TEST_PW", "password")
            .stdin(std::process::Stdio::null());
        let mut p = Proc::spawn(cmd);
        let status = p.wait(Duration::from_secs(30));
        (status, p.stdout(), p.stderr())
    };
    for args in [
        &["sessions", "cancel", "-id", "s_1234567890"][..],
        &["logout"][..],
        &["targets", "list", "-scope-id", "p_1234567890"][..],
        &[
            "authenticate",
            "password",
            "-login-name",
            "admin",
            "-password",
            "env://SLUICE_TEST_PW",
        ][..],
    ] {
        let (status, out, err) = run(args);
        assert!(!status.success(), "{args:?} reported success:\n{out}");
        assert!(
            err.contains(&addr)
                && err.contains("not the controller's JSON")
                && err.contains("text/html"),
            "{args:?}: {err}"
        );
    }
}
