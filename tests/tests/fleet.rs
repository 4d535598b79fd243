//! Workers as a fleet: `sluice server` and `sluice worker` as separate processes, enrollment,
//! worker filters, and what happens when either process dies.

use std::time::Duration;

use sluice_e2e::{
    idle_ssh_connection, sigusr1, text, wait_for, wait_for_ssh_start, Connect, Cuttable, Dev, Proc,
    ServerSetup, Sshd, WorkerProc,
};

const TARGET: &str = "ttcp_1234567890";

fn authorize_worker(dev: &Dev) -> String {
    let out = dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        TARGET,
        "-format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sid = v["item"]["session_id"].as_str().unwrap();
    dev.session_json(sid)["worker_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_worker_filter_picks_the_worker_with_matching_tags() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (prod_id, prod_token) = dev.create_worker("w-prod");
    let (dev_id, dev_token) = dev.create_worker("w-dev");
    let _prod = WorkerProc::start(&setup, Some(&prod_token), &["env=prod", "region=eu"]);
    let _devw = WorkerProc::start(&setup, Some(&dev_token), &["env=dev"]);

    let list = dev.ok(&["workers", "list"]);
    for want in [
        prod_id.as_str(),
        dev_id.as_str(),
        "env=prod region=eu",
        "env=dev",
    ] {
        assert!(list.contains(want), "missing {want:?} in:\n{list}");
    }
    assert_eq!(
        list.matches("Connected:                              true")
            .count(),
        2,
        "{list}"
    );

    let updated = dev.ok(&[
        "targets",
        "update",
        "tcp",
        "-id",
        TARGET,
        "-egress-worker-filter",
        r#""prod" in "/tags/env""#,
    ]);
    assert!(
        updated.contains(r#"Egress Worker Filter:       "prod" in "/tags/env""#),
        "{updated}"
    );
    for _ in 0..8 {
        assert_eq!(
            authorize_worker(&dev),
            prod_id,
            "the filter admits only w-prod"
        );
    }

    // Real traffic through the chosen worker.
    let opts = sshd.client_opts();
    let mut args = vec![
        "connect",
        "ssh",
        "-target-id",
        TARGET,
        "-username",
        &sshd.user,
        "--",
    ];
    args.extend(opts.iter().map(String::as_str));
    args.push("echo via-$((40+2))");
    let out = dev.sluice(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via-42");

    let filter = r#""dev" in "/tags/env" or "/name" == "nobody""#;
    dev.ok(&[
        "targets",
        "update",
        "tcp",
        "-id",
        TARGET,
        "-egress-worker-filter",
        filter,
    ]);
    assert_eq!(authorize_worker(&dev), dev_id);

    // No live worker matches: a clear refusal at authorize time.
    dev.ok(&[
        "targets",
        "update",
        "tcp",
        "-id",
        TARGET,
        "-egress-worker-filter",
        r#""staging" in "/tags/env""#,
    ]);
    let out = dev.sluice(&["targets", "authorize-session", "-id", TARGET]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no connected worker matches"), "{err}");

    // A filter that does not parse is refused and leaves the target as it was.
    let out = dev.sluice(&[
        "targets",
        "update",
        "tcp",
        "-id",
        TARGET,
        "-egress-worker-filter",
        r#""prod" in"#,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("egress_worker_filter is invalid"),
        "{}",
        text(&out.stderr)
    );
    let read = dev.ok(&["targets", "read", "-id", TARGET]);
    assert!(read.contains(r#""staging" in "/tags/env""#), "{read}");

    // A stale version is refused.
    let out = dev.sluice(&[
        "targets", "update", "tcp", "-id", TARGET, "-version", "1", "-name", "x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HTTP 409"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_controller_killed_mid_traffic_cuts_nothing_and_loses_nothing() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let mut dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&token), &[]);
    let mut conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    let mut live = Proc::spawn(sshd.ssh(
        conn.port,
        "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.5; done",
    ));
    wait_for("ssh output", Duration::from_secs(20), || {
        live.stdout().contains("line1").then_some(())
    });

    let _ = dev.proc.child.kill(); // SIGKILL
    let _ = dev.proc.child.wait();

    // Traffic goes on without the controller, and new connections of the session open.
    let st = live.wait(Duration::from_secs(30));
    assert!(st.success(), "ssh was cut: {}", live.stderr());
    assert!(live.stdout().contains("line8"), "{}", live.stdout());
    let during = sshd.ssh(conn.port, "echo during-outage").output().unwrap();
    assert_eq!(
        text(&during.stdout).trim(),
        "during-outage",
        "{}",
        text(&during.stderr)
    );

    dev.restart_server(&setup);
    worker.wait_linked_times(2);
    // The events of the outage were kept by the worker and replayed: both connections are
    // recorded, closed, with their bytes.
    let s = wait_for("the replayed events", Duration::from_secs(20), || {
        let s = dev.session_json(&conn.session_id);
        let conns = s["connections"].as_array().cloned().unwrap_or_default();
        (conns.len() == 2 && conns.iter().all(|c| c["status"] == "closed")).then_some(s)
    });
    assert_eq!(s["status"], "active", "{s}");
    for c in s["connections"].as_array().unwrap() {
        assert!(c["bytes_down"].as_u64().unwrap() > 0, "{c}");
    }

    // A cancel after the restart reaches the worker.
    dev.ok(&["sessions", "cancel", "-id", &conn.session_id]);
    conn.proc.wait(Duration::from_secs(15));
    assert!(
        conn.proc.stdout().contains("Session was canceled"),
        "{}",
        conn.proc.stdout()
    );
    dev.wait_status(&conn.session_id, "terminated", Duration::from_secs(15));
}

/// SIGUSR1 to a separate `sluice worker` prints its QUIC connection (with the path MTU it
/// discovered) and the relay that sits idle; to `sluice server`, which relays nothing, it says
/// so. Neither process ends: the connection still relays and the API still answers.
#[test]
fn sigusr1_on_a_worker_and_a_server_prints_their_state_and_ends_neither() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let worker = WorkerProc::start(&setup, Some(&token), &[]);
    let conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    let (mut tcp, n) = idle_ssh_connection(conn.port);
    std::thread::sleep(Duration::from_millis(1500));

    sigusr1(&worker.proc);
    let state = wait_for("the worker's state report", Duration::from_secs(10), || {
        let log = worker.proc.stderr();
        log.contains("sluice state: 1 relays live, 1 not moved for over a second")
            .then_some(log)
    });
    assert!(state.contains("sluice state: quic connection "), "{state}");
    // Loopback carries datagrams larger than Ethernet's, and path MTU discovery found them.
    let mtu: u32 = state
        .split(" mtu ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no path MTU in {state}"));
    assert!(mtu > 9_000, "path MTU {mtu} on loopback: {state}");
    let relay = state
        .lines()
        .find(|l| l.starts_with("sluice state: relay on connection "))
        .unwrap_or_else(|| panic!("no relay line in {state}"));
    // The worker read sshd's banner and quinn took all of it.
    assert!(
        relay.contains(&format!(
            "socket to quinn: read {n}, taken by quinn {n} (last"
        )),
        "{relay}"
    );

    sigusr1(&dev.proc);
    let state = wait_for("the server's state report", Duration::from_secs(10), || {
        let log = dev.proc.stderr();
        log.contains("sluice state: 0 relays live").then_some(log)
    });
    assert!(!state.contains("sluice state: relay on"), "{state}");

    // Both still run: the client's bytes reach sshd, which answers a bad identification, and
    // the API still shows the session.
    std::io::Write::write_all(&mut tcp, b"not ssh\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    assert!(!rest.is_empty(), "sshd's answer did not come back");
    assert_eq!(dev.session_json(&conn.session_id)["status"], "active");
}

#[test]
fn a_killed_worker_has_its_sessions_ended_with_system_error() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&token), &[]);
    let mut conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    // Mid-transfer: the remote side streams output until it is cut.
    let mut live = Proc::spawn(sshd.ssh(
        conn.port,
        "echo started; while true; do head -c 65536 /dev/zero | tr '\\0' x; echo; sleep 0.05; done",
    ));
    wait_for_ssh_start(&live, &conn.proc, &worker.proc);
    dev.wait_status(&conn.session_id, "active", Duration::from_secs(10));
    wait_for(
        "the connection to be recorded",
        Duration::from_secs(10),
        || {
            (dev.session_json(&conn.session_id)["connections"]
                .as_array()
                .is_some_and(|c| c.len() == 1))
            .then_some(())
        },
    );

    worker.kill9();
    // Within 15 s of the worker's death its session is terminated with system error.
    let read = dev.wait_status(&conn.session_id, "terminated", Duration::from_secs(15));
    assert_eq!(
        Dev::field(&read, "Termination Reason").as_deref(),
        Some("system error"),
        "{read}"
    );
    let s = dev.session_json(&conn.session_id);
    for c in s["connections"].as_array().unwrap() {
        assert_eq!(c["status"], "closed", "{c}");
    }
    assert!(
        s["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["closed_reason"] == "system error"),
        "{s}"
    );
    // The client is told in words, and ssh is cut rather than left hanging.
    assert!(
        !live.wait(Duration::from_secs(30)).success(),
        "ssh outlived the worker"
    );
    conn.proc.wait(Duration::from_secs(30));
    let said = conn.proc.stdout();
    assert!(
        said.contains("Termination information:")
            && said.contains("Reason:")
            && (said.contains("Lost the connection to the worker")
                || said.contains("The worker shut down or failed")),
        "{said}"
    );
    // With no worker left, authorizing says so.
    let out = dev.sluice(&["targets", "authorize-session", "-id", TARGET]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no worker is connected"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn activation_tokens_work_once_and_deleted_workers_are_shut_out() {
    let setup = ServerSetup::new(22);
    let dev = Dev::server(&setup);
    // The API is HTTPS with a certificate from the cluster CA: without that CA the CLI says
    // what to pass.
    assert!(dev.api.starts_with("https://"));
    let mut c = dev.cmd(&["workers", "list"]);
    c.env_remove("SLUICE_CACERT");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("-tls-ca-cert"),
        "{}",
        text(&out.stderr)
    );

    let (id, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&token), &[]);
    let read = dev.ok(&["workers", "read", "-id", &id]);
    assert_eq!(
        Dev::field(&read, "Connected").as_deref(),
        Some("true"),
        "{read}"
    );

    // The same token again, from a worker without an identity: refused.
    let dir = sluice_e2e::private_tempdir();
    let mut again = Proc::spawn({
        let mut c = std::process::Command::new(sluice_e2e::sluice_bin());
        c.args([
            "worker",
            "-proxy-addr",
            "127.0.0.1:0",
            "-initial-upstream",
            &setup.cluster_addr(),
        ])
        .arg("-auth-storage-path")
        .arg(dir.path())
        .args(["-activation-token", &token]);
        c
    });
    let st = again.wait(Duration::from_secs(30));
    assert!(!st.success());
    assert!(
        again.stderr().contains("already used"),
        "{}",
        again.stderr()
    );

    // A worker restarted with its stored identity links without a token.
    let mut restarted = worker.restart_from_identity();
    wait_for(
        "the restarted worker to link",
        Duration::from_secs(30),
        || {
            restarted
                .stderr()
                .contains("linked to the controller")
                .then_some(())
        },
    );

    // Deleted: its certificate no longer opens a link, and no session can be pinned to it.
    let out = dev.ok(&["workers", "delete", "-id", &id]);
    assert!(out.contains("delete operation completed"), "{out}");
    wait_for("the worker to be shut out", Duration::from_secs(20), || {
        restarted.stderr().contains("not registered").then_some(())
    });
    let out = dev.sluice(&["workers", "read", "-id", &id]);
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let out = dev.sluice(&["targets", "authorize-session", "-id", TARGET]);
    assert!(
        text(&out.stderr).contains("no worker is connected"),
        "{}",
        text(&out.stderr)
    );
    restarted.stop();
}

fn ssh_echo(sshd: &Sshd, port: u16, word: &str) {
    let out = sshd.ssh(port, &format!("echo {word}")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), word, "{}", text(&out.stderr));
}

#[test]
fn rotating_keys_keeps_live_sessions_and_issued_tokens_working() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let mut dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&token), &[]);
    let conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 3; echo finished"));
    wait_for_ssh_start(&live, &conn.proc, &worker.proc);
    // Issued under the old key, not used yet.
    let out = dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        TARGET,
        "-format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let old_token = v["item"]["authorization_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = dev.ok(&["scopes", "rotate-keys", "-scope-id", "global"]);
    assert!(out.contains("rotation completed"), "{out}");

    assert!(live.wait(Duration::from_secs(20)).success());
    assert!(live.stdout().contains("finished"));
    ssh_echo(&sshd, conn.port, "old-session-new-connection");
    let old = Connect::start(&dev, &["connect", "-authz-token", &old_token]);
    ssh_echo(&sshd, old.port, "old-token");
    let new = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    ssh_echo(&sshd, new.port, "new-key");

    // The keys survive a controller restart: the worker relinks and both tokens still work.
    let _ = dev.proc.child.kill();
    let _ = dev.proc.child.wait();
    dev.restart_server(&setup);
    worker.wait_linked_times(2);
    let after = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    ssh_echo(&sshd, after.port, "after-restart");
    ssh_echo(&sshd, old.port, "old-token-after-restart");
}

#[test]
fn a_worker_restarted_while_the_controller_is_down_still_admits_tokens() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let mut dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start(&setup, Some(&token), &[]);
    let out = dev.ok(&[
        "targets",
        "authorize-session",
        "-id",
        TARGET,
        "-format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let authz = v["item"]["authorization_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let _ = dev.proc.child.kill();
    let _ = dev.proc.child.wait();
    // Same identity and port, new process; the controller is still down.
    let mut restarted = worker.restart_from_identity();
    wait_for(
        "the restarted worker to listen",
        Duration::from_secs(30),
        || {
            restarted
                .stderr()
                .contains("worker listening")
                .then_some(())
        },
    );
    let conn = Connect::start(&dev, &["connect", "-authz-token", &authz]);
    ssh_echo(&sshd, conn.port, "no-controller-needed");

    // When the controller returns, the worker links and reports the session.
    dev.restart_server(&setup);
    wait_for("the worker to link", Duration::from_secs(30), || {
        restarted
            .stderr()
            .contains("linked to the controller")
            .then_some(())
    });
    let sid = conn.session_id.clone();
    wait_for("the session's events", Duration::from_secs(20), || {
        (dev.session_json(&sid)["connections"]
            .as_array()
            .is_some_and(|c| !c.is_empty()))
        .then_some(())
    });
    restarted.stop();
}

#[test]
fn a_cancel_made_while_the_worker_link_is_down_is_applied_when_it_returns() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (worker_id, token) = dev.create_worker("w1");
    let link = Cuttable::start(&setup.cluster_addr());
    let mut worker = WorkerProc::start_via(&link.addr, Some(&token), &[]);
    let mut conn = Connect::start(&dev, &["connect", "-target-id", TARGET]);
    let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 60"));
    wait_for_ssh_start(&live, &conn.proc, &worker.proc);

    // Both processes stay up; only the link between them goes down.
    link.cut();
    wait_for(
        "the controller to see the link down",
        Duration::from_secs(10),
        || {
            let out = dev.ok(&["workers", "read", "-id", &worker_id]);
            (Dev::field(&out, "Connected").as_deref() == Some("false")).then_some(())
        },
    );
    let out = dev.ok(&["sessions", "cancel", "-id", &conn.session_id]);
    assert_eq!(
        Dev::field(&out, "Status").as_deref(),
        Some("canceling"),
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        live.child.try_wait().unwrap().is_none(),
        "the worker cannot have heard of the cancel yet"
    );

    // The worker relinks and the cancel it missed closes the connection.
    link.mend();
    worker.wait_linked_times(2);
    assert!(
        !live.wait(Duration::from_secs(15)).success(),
        "ssh was not cut"
    );
    conn.proc.wait(Duration::from_secs(15));
    assert!(
        conn.proc.stdout().contains("Session was canceled"),
        "{}",
        conn.proc.stdout()
    );
    let read = dev.wait_status(&conn.session_id, "terminated", Duration::from_secs(15));
    assert_eq!(
        Dev::field(&read, "Termination Reason").as_deref(),
        Some("canceled")
    );
}

#[test]
fn a_worker_takes_its_io_driver_threads_and_polling_from_its_configuration_and_refuses_a_bad_one() {
    let sshd = Sshd::start();
    let setup = ServerSetup::new(sshd.port);
    let dev = Dev::server(&setup);
    let (_, token) = dev.create_worker("w1");
    let mut worker = WorkerProc::start_configured(
        &setup.cluster_addr(),
        Some(&token),
        &[],
        "[worker]\nio_driver = \"uring\"\nthreads = 1\nallow_plaintext = true\nbusy_poll_us = 80\n",
    );
    // `busy_poll_us` is read, and left unused by io_uring threads, which do not poll.
    assert!(
        worker
            .proc
            .stderr()
            .contains("threads=1 io_driver=uring busy_poll_us=0"),
        "{}",
        worker.proc.stderr()
    );
    let mut conn = Connect::start(
        &dev,
        &["connect", "-transport", "tcp", "-target-id", TARGET],
    );
    let out = sshd.ssh(conn.port, "echo on-uring").output().unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "on-uring",
        "{}",
        text(&out.stderr)
    );
    conn.proc.stop();
    worker.proc.stop();

    // On epoll the worker polls for as long as `busy_poll_us` says.
    let (_, token) = dev.create_worker("w2");
    let mut worker = WorkerProc::start_configured(
        &setup.cluster_addr(),
        Some(&token),
        &[],
        "[worker]\nthreads = 1\nbusy_poll_us = 80\n",
    );
    assert!(
        worker
            .proc
            .stderr()
            .contains("threads=1 io_driver=epoll busy_poll_us=80"),
        "{}",
        worker.proc.stderr()
    );
    worker.proc.stop();

    // A driver the worker does not know stops it before it starts, naming the setting.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(&cfg, "[worker]\nbusy_poll_us = 5000000\n").unwrap();
    let out = dev.sluice(&["worker", "-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("worker.busy_poll_us in the configuration is 5000000"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&cfg, "[worker]\nio_driver = \"kqueue\"\n").unwrap();
    let out = dev.sluice(&["worker", "-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("worker.io_driver in the configuration: unknown I/O driver \"kqueue\""),
        "{}",
        text(&out.stderr)
    );
}
