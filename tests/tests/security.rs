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
