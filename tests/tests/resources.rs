//! Boundary's resources around sessions, created and deleted through the CLI: host catalogs,
//! hosts, host sets, targets, and auth tokens (logout). Deleting what a session depends on
//! cancels it.

use std::time::Duration;

use sluice_e2e::{text, wait_for, Connect, Dev, Proc, Sshd};

const PROJECT: &str = "p_1234567890";

fn id_of(out: &str) -> String {
    Dev::field(out, "ID").unwrap_or_else(|| panic!("no ID in:\n{out}"))
}

fn fails_with(dev: &Dev, args: &[&str], want: &str) {
    let out = dev.sluice(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = text(&out.stderr);
    assert!(err.contains(want), "{args:?}: wanted {want:?} in:\n{err}");
}

/// `connect` ends saying its session was canceled and, given `session`, that session reads
/// terminated with reason `canceled`.
fn assert_canceled(dev: &Dev, conn: &mut Proc, session: Option<&str>, what: &str) {
    conn.wait(Duration::from_secs(15));
    assert!(
        conn.stdout().contains("Session was canceled"),
        "{what}: {}",
        conn.stdout()
    );
    if let Some(id) = session {
        let read = dev.wait_status(id, "terminated", Duration::from_secs(15));
        assert_eq!(
            Dev::field(&read, "Termination Reason").as_deref(),
            Some("canceled"),
            "{what}"
        );
    }
}

/// A catalog, a host at 127.0.0.1, a set holding it, and a target using the set.
fn build_target(dev: &Dev, sshd: &Sshd, name: &str) -> (String, String, String) {
    build_target_in(dev, sshd, name, PROJECT)
}

fn build_target_in(dev: &Dev, sshd: &Sshd, name: &str, project: &str) -> (String, String, String) {
    let cat = id_of(&dev.ok(&[
        "host-catalogs",
        "create",
        "static",
        "-scope-id",
        project,
        "-name",
        name,
    ]));
    let host = id_of(&dev.ok(&[
        "hosts",
        "create",
        "static",
        "-host-catalog-id",
        &cat,
        "-address",
        "127.0.0.1",
        "-name",
        name,
    ]));
    let set = id_of(&dev.ok(&[
        "host-sets",
        "create",
        "static",
        "-host-catalog-id",
        &cat,
        "-name",
        name,
    ]));
    let out = dev.ok(&["host-sets", "add-hosts", "-id", &set, "-host", &host]);
    assert_eq!(Dev::field(&out, "Host IDs"), Some(host.clone()), "{out}");
    let port = sshd.port.to_string();
    let target = id_of(&dev.ok(&[
        "targets",
        "create",
        "tcp",
        "-scope-id",
        project,
        "-name",
        name,
        "-default-port",
        &port,
    ]));
    let out = dev.ok(&[
        "targets",
        "add-host-sources",
        "-id",
        &target,
        "-host-source",
        &set,
    ]);
    assert!(
        out.contains(&format!("Host Sources:               {set}")),
        "{out}"
    );
    (host, set, target)
}

fn ssh_echo(sshd: &Sshd, port: u16, word: &str) {
    let out = sshd.ssh(port, &format!("echo {word}")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), word, "{}", text(&out.stderr));
}

#[test]
fn resources_built_from_the_cli_carry_sessions_and_refuse_bad_input() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let (host, set, target) = build_target(&dev, &sshd, "built");
    let conn = Connect::start(&dev, &["connect", "-target-id", &target]);
    ssh_echo(&sshd, conn.port, "through-built-target");
    let s = dev.session_json(&conn.session_id);
    assert_eq!(s["host_id"], host.as_str());
    assert_eq!(s["host_set_id"], set.as_str());

    // Listing and reading.
    let cat = Dev::field(&dev.ok(&["hosts", "read", "-id", &host]), "Host Catalog ID").unwrap();
    assert!(dev
        .ok(&["hosts", "list", "-host-catalog-id", &cat])
        .contains(&host));
    assert!(dev
        .ok(&["host-sets", "list", "-host-catalog-id", &cat])
        .contains(&set));
    assert!(dev
        .ok(&["host-catalogs", "list", "-scope-id", PROJECT])
        .contains(&cat));

    // Bad input is refused with a reason and changes nothing.
    fails_with(
        &dev,
        &[
            "hosts",
            "create",
            "static",
            "-host-catalog-id",
            &cat,
            "-address",
            "10.0.0.1:22",
        ],
        "without a port",
    );
    fails_with(
        &dev,
        &[
            "targets",
            "create",
            "tcp",
            "-scope-id",
            PROJECT,
            "-name",
            "no-port",
        ],
        "needs a default port",
    );
    fails_with(
        &dev,
        &[
            "targets",
            "create",
            "tcp",
            "-scope-id",
            "o_1234567890",
            "-name",
            "x",
            "-default-port",
            "22",
        ],
        "project scope",
    );
    let direct = id_of(&dev.ok(&[
        "targets",
        "create",
        "tcp",
        "-scope-id",
        PROJECT,
        "-name",
        "direct",
        "-default-port",
        "22",
        "-address",
        "127.0.0.1",
    ]));
    fails_with(
        &dev,
        &[
            "targets",
            "add-host-sources",
            "-id",
            &direct,
            "-host-source",
            &set,
        ],
        "never both",
    );
    fails_with(
        &dev,
        &[
            "targets",
            "add-host-sources",
            "-id",
            &target,
            "-host-source",
            &set,
            "-version",
            "1",
        ],
        "HTTP 409",
    );
    fails_with(
        &dev,
        &["hosts", "read", "-id", "hst_nothere00"],
        "not found",
    );

    // Updates: versions move, stale ones are refused, a host keeps refusing a port.
    let out = dev.ok(&[
        "hosts", "update", "static", "-id", &host, "-name", "renamed",
    ]);
    assert_eq!(
        Dev::field(&out, "Name").as_deref(),
        Some("renamed"),
        "{out}"
    );
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("2"), "{out}");
    fails_with(
        &dev,
        &[
            "hosts", "update", "static", "-id", &host, "-version", "1", "-name", "x",
        ],
        "HTTP 409",
    );
    fails_with(
        &dev,
        &[
            "hosts",
            "update",
            "static",
            "-id",
            &host,
            "-address",
            "127.0.0.1:2222",
        ],
        "without a port",
    );
    let out = dev.ok(&[
        "host-sets",
        "update",
        "static",
        "-id",
        &set,
        "-description",
        "the set",
    ]);
    assert_eq!(
        Dev::field(&out, "Description").as_deref(),
        Some("the set"),
        "{out}"
    );
    let out = dev.ok(&[
        "host-catalogs",
        "update",
        "static",
        "-id",
        &cat,
        "-name",
        "cat2",
    ]);
    assert_eq!(Dev::field(&out, "Name").as_deref(), Some("cat2"), "{out}");
    fails_with(
        &dev,
        &[
            "host-sets",
            "update",
            "static",
            "-id",
            &set,
            "-address",
            "10.0.0.1",
        ],
        "has no address",
    );

    // The unprivileged user may not create resources.
    let user_token = dev.login_token("user", "password");
    fails_with(
        &dev,
        &[
            "host-catalogs",
            "create",
            "static",
            "-scope-id",
            PROJECT,
            "-token",
            &user_token,
        ],
        "only an administrator",
    );
}

#[test]
fn deleting_a_target_a_host_or_an_auth_token_cancels_its_sessions() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);

    for what in ["target", "host", "host-catalog"] {
        let (host, _, target) = build_target(&dev, &sshd, what);
        let mut conn = Connect::start(&dev, &["connect", "-target-id", &target]);
        let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 60"));
        wait_for("ssh to start", Duration::from_secs(20), || {
            live.stdout().contains("started").then_some(())
        });
        let out = match what {
            "target" => dev.ok(&["targets", "delete", "-id", &target]),
            "host" => dev.ok(&["hosts", "delete", "-id", &host]),
            _ => {
                let cat = Dev::field(&dev.ok(&["hosts", "read", "-id", &host]), "Host Catalog ID")
                    .unwrap();
                dev.ok(&["host-catalogs", "delete", "-id", &cat])
            }
        };
        assert!(out.contains("delete operation completed"), "{out}");
        assert!(
            !live.wait(Duration::from_secs(15)).success(),
            "{what}: ssh was not cut"
        );
        assert_canceled(&dev, &mut conn.proc, Some(&conn.session_id), what);
    }

    // Logout revokes the token: its session is canceled and the token no longer works.
    let (_, _, target) = build_target(&dev, &sshd, "logout");
    let mut conn = Connect::start(&dev, &["connect", "-target-id", &target]);
    ssh_echo(&sshd, conn.port, "before-logout");
    let out = dev.ok(&["logout"]);
    assert!(out.contains("was revoked"), "{out}");
    assert_canceled(&dev, &mut conn.proc, None, "logout");
    fails_with(
        &dev,
        &["sessions", "list", "-scope-id", PROJECT],
        "not authenticated",
    );
}

#[test]
fn users_and_accounts_are_managed_and_a_deleted_user_loses_its_sessions() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let account = id_of(&dev.ok(&[
        "accounts",
        "create",
        "password",
        "-login-name",
        "carol",
        "-password",
        "carol-secret-1",
    ]));
    // Without a user the account cannot log in.
    let home = tempfile::tempdir().unwrap();
    let login = |dev: &Dev| {
        let mut c = dev.cmd(&[
            "authenticate",
            "password",
            "-login-name",
            "carol",
            "-password",
            "env://CAROL_PW",
        ]);
        c.env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("CAROL_PW", "carol-secret-1");
        c.output().unwrap()
    };
    let out = login(&dev);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("belongs to no user"),
        "{}",
        text(&out.stderr)
    );

    let user = id_of(&dev.ok(&["users", "create", "-name", "carol"]));
    let out = dev.ok(&["users", "add-accounts", "-id", &user, "-account", &account]);
    assert_eq!(
        Dev::field(&out, "Account IDs"),
        Some(account.clone()),
        "{out}"
    );
    assert_eq!(Dev::field(&out, "Role").as_deref(), Some("user"));
    let out = login(&dev);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let carol = |args: &[&str]| {
        let mut c = dev.cmd(args);
        c.env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"));
        Proc::spawn(c)
    };

    // Carol may connect but not administer.
    let mut p = carol(&["users", "list"]);
    p.wait(Duration::from_secs(30));
    assert!(
        p.stdout().contains(&user) && !p.stdout().contains("u_1234567890"),
        "{}",
        p.stdout()
    );
    let mut p = carol(&["users", "create", "-name", "mallory"]);
    assert!(!p.wait(Duration::from_secs(30)).success());
    assert!(
        p.stderr().contains("only an administrator"),
        "{}",
        p.stderr()
    );
    let mut c = dev.cmd(&["connect", "-target-id", "ttcp_1234567890"]);
    c.env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"));
    let mut conn = Connect::from_cmd(c);
    ssh_echo(&sshd, conn.port, "carol-was-here");

    // Stale versions are refused; a role change works.
    fails_with(
        &dev,
        &[
            "users", "update", "-id", &user, "-version", "1", "-name", "x",
        ],
        "HTTP 409",
    );
    let out = dev.ok(&[
        "users",
        "update",
        "-id",
        &user,
        "-description",
        "contractor",
    ]);
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("3"), "{out}");

    // Deleting Carol cancels her session and revokes her token.
    dev.ok(&["users", "delete", "-id", &user]);
    assert_canceled(&dev, &mut conn.proc, Some(&conn.session_id), "user deleted");
    let mut p = carol(&["sessions", "list", "-scope-id", PROJECT]);
    assert!(!p.wait(Duration::from_secs(30)).success());
    assert!(
        p.stderr().contains("invalid or has expired"),
        "{}",
        p.stderr()
    );
}

#[test]
fn orgs_and_projects_are_managed_and_deleting_an_org_cancels_what_ran_in_it() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let org = id_of(&dev.ok(&[
        "scopes",
        "create",
        "-scope-id",
        "global",
        "-name",
        "engineering",
        "-description",
        "the engineers",
    ]));
    assert!(org.starts_with("o_"), "{org}");
    let out = dev.ok(&["scopes", "create", "-scope-id", &org, "-name", "staging"]);
    let project = id_of(&out);
    assert!(project.starts_with("p_"), "{project}");
    assert_eq!(Dev::field(&out, "Type").as_deref(), Some("project"));
    assert_eq!(Dev::field(&out, "Scope ID"), Some(org.clone()));

    // Listing: global shows orgs; recursive adds their projects.
    let orgs = dev.ok(&["scopes", "list"]);
    assert!(orgs.contains(&org) && !orgs.contains(&project), "{orgs}");
    let all = dev.ok(&["scopes", "list", "-recursive"]);
    assert!(all.contains(&org) && all.contains(&project), "{all}");
    assert!(dev
        .ok(&["scopes", "list", "-scope-id", &org])
        .contains(&project));

    // Updates carry versions; a stale one is refused and changes nothing.
    let out = dev.ok(&["scopes", "update", "-id", &org, "-name", "eng"]);
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("2"));
    fails_with(
        &dev,
        &[
            "scopes", "update", "-id", &org, "-name", "other", "-version", "1",
        ],
        "not 1",
    );
    let read = dev.ok(&["scopes", "read", "-id", &org]);
    assert_eq!(Dev::field(&read, "Name").as_deref(), Some("eng"));

    // Refusals say why.
    fails_with(
        &dev,
        &["scopes", "create", "-scope-id", &project, "-name", "x"],
        "projects hold no scopes",
    );
    fails_with(
        &dev,
        &["scopes", "create", "-scope-id", "o_nothere00", "-name", "x"],
        "not found",
    );
    fails_with(
        &dev,
        &["scopes", "create", "-scope-id", &org, "-name", "staging"],
        "already exists",
    );
    fails_with(
        &dev,
        &["scopes", "delete", "-id", "global"],
        "cannot be deleted",
    );
    fails_with(
        &dev,
        &[
            "targets",
            "create",
            "tcp",
            "-scope-id",
            &org,
            "-name",
            "t",
            "-default-port",
            "22",
        ],
        "not one",
    );

    // A session through a target of the new project; deleting the org cancels it and removes
    // the project with its catalog, hosts, sets and target.
    let (host, _, target) = build_target_in(&dev, &sshd, "in-org", &project);

    // A user given only the new project sees and authorizes its targets, not the others.
    let account = id_of(&dev.ok(&[
        "accounts",
        "create",
        "password",
        "-login-name",
        "erin",
        "-password",
        "erin-secret-1",
    ]));
    fails_with(
        &dev,
        &["users", "create", "-name", "erin", "-project-id", &org],
        "not a project scope",
    );
    let out = dev.ok(&["users", "create", "-name", "erin", "-project-id", &project]);
    assert_eq!(
        Dev::field(&out, "Project IDs"),
        Some(project.clone()),
        "{out}"
    );
    let erin = id_of(&out);
    dev.ok(&["users", "add-accounts", "-id", &erin, "-account", &account]);
    let erin_token = dev.login_token("erin", "erin-secret-1");
    let out = dev.ok(&[
        "targets",
        "list",
        "-scope-id",
        &project,
        "-token",
        &erin_token,
    ]);
    assert!(out.contains(&target), "{out}");
    let out = dev.ok(&[
        "targets",
        "list",
        "-scope-id",
        PROJECT,
        "-token",
        &erin_token,
    ]);
    assert!(!out.contains("ttcp_1234567890"), "{out}");
    fails_with(
        &dev,
        &[
            "targets",
            "authorize-session",
            "-id",
            "ttcp_1234567890",
            "-token",
            &erin_token,
        ],
        "has not been given",
    );
    dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        &target,
        "-token",
        &erin_token,
    ]);
    let out = dev.ok(&["users", "update", "-id", &erin, "-all-projects"]);
    assert_eq!(Dev::field(&out, "Project IDs"), None, "{out}");
    dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        "ttcp_1234567890",
        "-token",
        &erin_token,
    ]);
    let mut conn = Connect::start(&dev, &["connect", "-target-id", &target]);
    let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 60"));
    wait_for("ssh to start", Duration::from_secs(20), || {
        live.stdout().contains("started").then_some(())
    });
    let out = dev.ok(&["scopes", "delete", "-id", &org]);
    assert!(out.contains("delete operation completed"), "{out}");
    assert!(
        !live.wait(Duration::from_secs(15)).success(),
        "ssh was not cut"
    );
    assert_canceled(&dev, &mut conn.proc, None, "org deleted");
    for (what, id) in [("scopes", &project), ("targets", &target), ("hosts", &host)] {
        fails_with(&dev, &[what, "read", "-id", id], "not found");
    }
    assert!(!dev.ok(&["scopes", "list", "-recursive"]).contains(&org));

    // The unprivileged user may read scopes but not create them.
    let user_token = dev.login_token("user", "password");
    fails_with(
        &dev,
        &["scopes", "create", "-name", "mine", "-token", &user_token],
        "only an administrator",
    );
}

#[test]
fn auth_tokens_are_listed_read_revoked_and_expire_as_configured() {
    // A lifetime that is not a duration stops the server with the reason.
    let bad = sluice_e2e::ServerSetup::new(22);
    let config = bad.data_dir.path().join("bad.toml");
    std::fs::write(&config, "[controller]\nauth_token_time_to_live = \"7d\"\n").unwrap();
    let out = std::process::Command::new(sluice_e2e::sluice_bin())
        .args(["server", "-config"])
        .arg(&config)
        .arg("-data-dir")
        .arg(bad.data_dir.path().join("store"))
        .args(["-api-addr", "127.0.0.1:0", "-cluster-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("\"7d\" is not a duration"),
        "{}",
        text(&out.stderr)
    );

    let mut setup = sluice_e2e::ServerSetup::new(22);
    setup.controller_toml = "[controller]\nauth_token_time_to_live = \"6s\"\n".into();
    let dev = Dev::server(&setup);
    let user = dev.login("user", "password");
    let user_token = user["attributes"]["token"].as_str().unwrap().to_owned();
    let user_token_id = user["attributes"]["id"].as_str().unwrap().to_owned();
    let created: jiff::Timestamp = user["attributes"]["created_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expires: jiff::Timestamp = user["attributes"]["expiration_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(expires.duration_since(created).as_secs(), 6);

    // The administrator sees every token; the user only its own, and reading another's is
    // refused without showing it.
    let all = dev.ok(&["auth-tokens", "list"]);
    assert!(all.contains(&user_token_id), "{all}");
    assert_eq!(all.matches("Expiration Time").count(), 2, "{all}");
    let own = dev.ok(&["auth-tokens", "list", "-token", &user_token]);
    assert_eq!(own.matches("Expiration Time").count(), 1, "{own}");
    assert!(own.contains(&user_token_id), "{own}");
    let admin_token_id = all
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ID:"))
        .map(|v| v.trim().to_owned())
        .find(|id| *id != user_token_id)
        .unwrap();
    fails_with(
        &dev,
        &[
            "auth-tokens",
            "read",
            "-id",
            &admin_token_id,
            "-token",
            &user_token,
        ],
        "belongs to another user",
    );
    let read = dev.ok(&["auth-tokens", "read", "-id", &user_token_id]);
    assert_eq!(
        Dev::field(&read, "User ID").as_deref(),
        Some(user["attributes"]["user_id"].as_str().unwrap())
    );
    assert!(
        !read.contains(&user_token),
        "the secret must never be shown: {read}"
    );

    // Revoking by id: the token stops working at once.
    let out = dev.ok(&["auth-tokens", "delete", "-id", &user_token_id]);
    assert!(out.contains("delete operation completed"), "{out}");
    fails_with(
        &dev,
        &["auth-tokens", "list", "-token", &user_token],
        "invalid or has expired",
    );

    // After the configured lifetime the admin's own token is refused with what to do.
    std::thread::sleep(Duration::from_secs(7));
    fails_with(&dev, &["auth-tokens", "list"], "authenticate password");
}

#[test]
fn accounts_are_read_deleted_and_their_passwords_set_and_changed() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let user = id_of(&dev.ok(&["users", "create", "-name", "dave"]));
    let out = dev.ok(&[
        "accounts",
        "create",
        "password",
        "-login-name",
        "dave",
        "-password",
        "dave-first-pw",
        "-user-id",
        &user,
    ]);
    let account = id_of(&out);
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("1"), "{out}");
    let as_dave = |token: &str, args: &[&str]| {
        let mut c = dev.cmd(args);
        c.env("SLUICE_TOKEN", token);
        let mut p = Proc::spawn(c);
        let ok = p.wait(Duration::from_secs(60)).success();
        (ok, p.stdout(), p.stderr())
    };
    // Logging in stores the token in HOME: Dave's go elsewhere than the admin's.
    let dave_home = tempfile::tempdir().unwrap();
    let can_log_in = |pw: &str| {
        let mut c = dev.cmd(&[
            "authenticate",
            "password",
            "-login-name",
            "dave",
            "-password",
            pw,
        ]);
        c.env("HOME", dave_home.path())
            .env("XDG_CONFIG_HOME", dave_home.path().join(".config"));
        Proc::spawn(c).wait(Duration::from_secs(60)).success()
    };
    let token = dev.login_token("dave", "dave-first-pw");

    // Dave reads his own account, not the admin's.
    let (ok, out, err) = as_dave(&token, &["accounts", "read", "-id", &account]);
    assert!(ok, "{err}");
    assert_eq!(Dev::field(&out, "Login Name").as_deref(), Some("dave"));
    assert_eq!(Dev::field(&out, "User ID"), Some(user.clone()), "{out}");
    let (ok, _, err) = as_dave(&token, &["accounts", "read", "-id", "acctpw_1234567890"]);
    assert!(
        !ok && err.contains("HTTP 403") && err.contains("not yours"),
        "{err}"
    );
    let (ok, _, err) = as_dave(
        &token,
        &[
            "accounts",
            "set-password",
            "-id",
            &account,
            "-password",
            "x-long-password",
        ],
    );
    assert!(!ok && err.contains("only an administrator"), "{err}");

    // Changing his password needs the current one and the current version.
    let change = |current: &str, new: &str, version: Option<&str>| {
        let mut args = vec![
            "accounts",
            "change-password",
            "-id",
            &account,
            "-current-password",
            current,
            "-new-password",
            new,
        ];
        if let Some(v) = version {
            args.extend(["-version", v]);
        }
        as_dave(&token, &args)
    };
    let (ok, _, err) = change("not-his-password", "dave-second-pw", None);
    assert!(!ok && err.contains("current password is wrong"), "{err}");
    let (ok, _, err) = change("dave-first-pw", "dave-second-pw", Some("7"));
    assert!(!ok && err.contains("HTTP 409"), "{err}");
    let (ok, _, err) = change("dave-first-pw", "short", None);
    assert!(!ok && err.contains("8–1024 characters"), "{err}");
    assert!(can_log_in("dave-first-pw"), "refusals changed nothing");
    let (ok, out, err) = change("dave-first-pw", "dave-second-pw", None);
    assert!(ok, "{err}");
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("2"), "{out}");
    assert!(!can_log_in("dave-first-pw"));
    assert!(can_log_in("dave-second-pw"));

    // An administrator sets it without knowing it; the version moves on.
    fails_with(
        &dev,
        &[
            "accounts",
            "set-password",
            "-id",
            &account,
            "-password",
            "admin-set-pw",
            "-version",
            "1",
        ],
        "HTTP 409",
    );
    fails_with(
        &dev,
        &[
            "accounts",
            "set-password",
            "-id",
            &account,
            "-password",
            "file:///nonexistent/pw",
        ],
        "refers to file /nonexistent/pw, which could not be read",
    );
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "admin-set-pw\n").unwrap();
    let pw_ref = format!("file://{}", pw_file.display());
    let out = dev.ok(&[
        "accounts",
        "set-password",
        "-id",
        &account,
        "-password",
        &pw_ref,
    ]);
    assert_eq!(Dev::field(&out, "Version").as_deref(), Some("3"), "{out}");
    assert!(!can_log_in("dave-second-pw"));
    assert!(can_log_in("admin-set-pw"));

    // Deleting the account revokes Dave's tokens and cancels the sessions made with them.
    let token = dev.login_token("dave", "admin-set-pw");
    let mut c = dev.cmd(&["connect", "-target-id", "ttcp_1234567890"]);
    c.env("SLUICE_TOKEN", &token);
    let mut conn = Connect::from_cmd(c);
    ssh_echo(&sshd, conn.port, "dave-was-here");
    let admin_account = "acctpw_1234567890";
    fails_with(
        &dev,
        &["accounts", "delete", "-id", admin_account],
        "the account you are logged in with",
    );
    dev.ok(&["accounts", "delete", "-id", &account]);
    assert_canceled(
        &dev,
        &mut conn.proc,
        Some(&conn.session_id),
        "account deleted",
    );
    let (ok, _, err) = as_dave(&token, &["sessions", "list", "-scope-id", PROJECT]);
    assert!(!ok && err.contains("invalid or has expired"), "{err}");
    assert!(!can_log_in("admin-set-pw"));
    fails_with(&dev, &["accounts", "read", "-id", &account], "HTTP 404");
    let list = dev.ok(&["accounts", "list"]);
    assert!(
        !list.contains(&account) && list.contains(admin_account),
        "{list}"
    );
    // The user stays, without the account.
    let out = dev.ok(&["users", "read", "-id", &user]);
    assert!(!out.contains(&account), "{out}");
}
