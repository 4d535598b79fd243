//! The `tls` and `tcp` transports end to end: same commands, same refusals, same cancel.

use std::time::Duration;

use sluice_e2e::{idle_ssh_connection, sigusr1, text, wait_for, Connect, Dev, Proc, Sshd};

fn ssh_through(dev: &Dev, sshd: &Sshd, transport: &str, remote: &str) -> std::process::Output {
    let mut args = vec![
        "connect",
        "ssh",
        "-transport",
        transport,
        "-target-id",
        "ttcp_1234567890",
        "-username",
        sshd.user.as_str(),
        "--",
    ];
    let opts = sshd.client_opts();
    args.extend(opts.iter().map(String::as_str));
    args.push(remote);
    dev.sluice(&args)
}

/// The command of a `sluice connect` to the generated TCP target over `transport`, with `extra`
/// flags.
fn connect_cmd(dev: &Dev, transport: &str, extra: &[&str]) -> std::process::Command {
    let mut args = vec![
        "connect",
        "-transport",
        transport,
        "-target-id",
        "ttcp_1234567890",
    ];
    args.extend(extra);
    dev.cmd(&args)
}

/// [`connect_cmd`], started and listening.
fn connect_over(dev: &Dev, transport: &str, extra: &[&str]) -> Connect {
    Connect::from_cmd(connect_cmd(dev, transport, extra))
}

/// `sluice dev` whose generated target is `port` on 127.0.0.1, with plaintext allowed.
fn dev_for_port(port: &str) -> Dev {
    Dev::start(&[
        "-host-address",
        "127.0.0.1",
        "-target-default-port",
        port,
        "-worker-allow-plaintext",
    ])
}

/// An application's connection to `conn`'s local port, whose reads give up after 10 s.
fn app_connection(conn: &Connect) -> std::net::TcpStream {
    let local = std::net::TcpStream::connect(("127.0.0.1", conn.port)).unwrap();
    local
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    local
}

#[test]
fn ssh_works_over_tls_and_allowed_plaintext_tcp() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &["-worker-allow-plaintext"]);
    for transport in ["tls", "tcp", "quic"] {
        let out = ssh_through(&dev, &sshd, transport, "echo via-$((40+2))");
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "via-42", "{transport}");
    }
}

#[test]
fn plaintext_is_refused_unless_the_worker_allows_it() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let out = ssh_through(&dev, &sshd, "tcp", "true");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not accept the plaintext tcp transport"),
        "{}",
        text(&out.stderr)
    );
    assert!(ssh_through(&dev, &sshd, "tls", "true").status.success());
}

#[test]
fn cancel_and_limits_work_the_same_over_tls() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &["-target-session-connection-limit", "2"]);
    let mut conn = Connect::start(
        &dev,
        &[
            "connect",
            "-transport",
            "tls",
            "-target-id",
            "ttcp_1234567890",
        ],
    );
    assert!(sshd.ssh(conn.port, "true").status().unwrap().success());
    let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 60"));
    wait_for("ssh over tls", Duration::from_secs(20), || {
        live.stdout().contains("started").then_some(())
    });
    // Two of two connections used: a third is refused while the second is open.
    assert!(!sshd.ssh(conn.port, "true").status().unwrap().success());
    let read = dev.read_session(&conn.session_id);
    assert_eq!(Dev::field(&read, "Status").as_deref(), Some("active"));
    dev.ok(&["sessions", "cancel", "-id", &conn.session_id]);
    assert!(!live.wait(Duration::from_secs(10)).success());
    conn.proc.wait(Duration::from_secs(10));
    assert!(
        conn.proc.stdout().contains("Reason: Session was canceled"),
        "{}",
        conn.proc.stdout()
    );
    let read = dev.wait_status(&conn.session_id, "terminated", Duration::from_secs(10));
    assert_eq!(
        Dev::field(&read, "Termination Reason").as_deref(),
        Some("canceled")
    );
}

/// ssh runs a command over each transport, and 6,000,000 bytes (several reads' worth, so a
/// relay's buffers grow) arrive whole over the plaintext relay.
fn carries_ssh_over_every_transport_and_6_mb_over_tcp(dev: &Dev, sshd: &Sshd) {
    for transport in ["tcp", "tls", "quic"] {
        let out = ssh_through(dev, sshd, transport, "echo via-$((40+2))");
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "via-42", "{transport}");
    }
    let out = ssh_through(dev, sshd, "tcp", "head -c 6000000 /dev/zero | tr '\\0' x");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 6_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
}

/// Where io_uring cannot be made (here: `io_uring_setup` refused by a seccomp filter on the dev
/// process alone, as a container runtime's default profile does), `-io-driver uring` says so
/// once and the worker carries sessions on epoll.
#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn the_uring_driver_falls_back_to_epoll_where_io_uring_is_refused() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd_prepared(
        &sshd,
        &[
            "-worker-allow-plaintext",
            "-io-driver",
            "uring",
            "-busy-poll-us",
            "120",
        ],
        sluice_e2e::deny_io_uring,
    );
    let log = dev.proc.stderr();
    assert_eq!(
        log.matches("io_uring is not available here; the worker uses the epoll driver")
            .count(),
        1,
        "the fallback is said once: {log}"
    );
    let listening = log
        .lines()
        .find(|l| l.contains("worker listening"))
        .unwrap_or_else(|| panic!("no start-up line: {log}"));
    assert!(listening.contains("io_driver=epoll"), "{listening}");
    // Back on epoll, the worker polls after small transfers as asked (uring threads do not).
    assert!(listening.contains("busy_poll_us=120"), "{listening}");
    carries_ssh_over_every_transport_and_6_mb_over_tcp(&dev, &sshd);
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Milliseconds of CPU each of `pids` uses while the test waits `quiet`.
fn cpu_ms_during(pids: &[u32], quiet: Duration) -> Vec<u64> {
    let ticks_per_s = 100; // USER_HZ on Linux
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    std::thread::sleep(quiet);
    pids.iter()
        .zip(before)
        .map(|(&p, b)| (cpu_ticks(p) - b) * 1000 / ticks_per_s)
        .collect()
}

/// The worker polls for a moment after each small transfer instead of sleeping (crate `spin`),
/// which an interactive session makes all the time. Once the traffic stops, it must sleep
/// again: a worker that kept polling would hold a core for as long as it runs.
#[test]
fn a_worker_goes_back_to_sleep_after_interactive_traffic() {
    let sshd = Sshd::start();
    // Asked for, as the default is 0 on a machine with one CPU (spin::default_window).
    let dev = Dev::for_sshd(&sshd, &["-worker-allow-plaintext", "-busy-poll-us", "50"]);
    let log = dev.proc.stderr();
    assert!(
        log.contains("busy_poll_us=50"),
        "the window asked for: {log}"
    );
    let pid = dev.proc.child.id();
    for transport in ["tcp", "tls", "quic"] {
        // Many small round trips: each line goes to the target and back in small transfers.
        let out = ssh_through(
            &dev,
            &sshd,
            transport,
            "for i in $(seq 1 200); do echo line-$i; done",
        );
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 200, "{transport}");
    }
    // Sessions end (the clients are gone) and the window closes within microseconds; leave
    // time for the last events, then watch an idle second and a half.
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_ms_during(&[pid], Duration::from_millis(1500))[0];
    // A thread still polling uses about 1.5 s here; an idle dev a few tens of ms at most.
    assert!(
        used < 400,
        "sluice dev used {used} ms of CPU in 1.5 s with no traffic"
    );
}

/// Whether this machine has more than one CPU online, where Sluice polls by default
/// (`spin::default_window`): a one-CPU machine's list is a single number.
fn polls_by_default() -> bool {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    !online.trim().chars().all(|c| c.is_ascii_digit())
}

/// `connect` polls too, for the same window after each small transfer (its relays share the
/// worker's), unless told not to. Left running between sessions of interactive traffic, it must
/// sleep again once the traffic stops, whatever its window, or it would hold a core of the
/// user's machine.
#[test]
fn a_connect_left_running_polls_during_interactive_traffic_then_sleeps() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &["-worker-allow-plaintext"]);
    // The worker's default window as well: 50 µs, or none on a machine with one CPU.
    let log = dev.proc.stderr();
    let default = if polls_by_default() { 50 } else { 0 };
    let listening = log
        .lines()
        .find(|l| l.contains("worker listening"))
        .unwrap_or_else(|| panic!("no start-up line: {log}"));
    assert!(
        listening
            .split_whitespace()
            .any(|w| w == format!("busy_poll_us={default}")),
        "the default window: {listening}"
    );
    // And its word on idle CPUs, where they halt at once (spin::idle_cpus_halt_at_once).
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let halts = read("/sys/devices/system/cpu/cpuidle/current_driver").trim() == "haltpoll"
        && read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").trim() == "0";
    assert_eq!(
        log.contains("idle CPUs here halt at once"),
        halts,
        "the start-up line on idle CPUs: {log}"
    );
    let mut connects = Vec::new();
    for (transport, extra) in [
        ("quic", &[][..]),
        ("tls", &[]),
        ("tcp", &["-busy-poll-us", "1000000"]),
        ("quic", &["-busy-poll-us", "0"]),
    ] {
        let mut cmd = connect_cmd(&dev, transport, extra);
        cmd.env("SLUICE_LOG", "sluice_dataplane::spin=debug");
        let conn = Connect::from_cmd(cmd);
        let out = sshd
            .ssh(conn.port, "for i in $(seq 1 200); do echo line-$i; done")
            .output()
            .unwrap();
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 200, "{transport}");
        connects.push((transport, extra, conn));
    }
    // The longest window above is a second from the last transfer; then watch an idle second
    // and a half.
    std::thread::sleep(Duration::from_millis(1200));
    let pids: Vec<u32> = connects.iter().map(|(_, _, c)| c.proc.child.id()).collect();
    let used = cpu_ms_during(&pids, Duration::from_millis(1500));
    for ((transport, extra, c), used) in connects.iter().zip(used) {
        // The polling thread says so once it starts (spin.rs), and only with a window.
        let polled = c
            .proc
            .stderr()
            .contains("busy polling after a small transfer");
        let asked_for_none = *extra == ["-busy-poll-us", "0"];
        assert_eq!(
            polled,
            !asked_for_none && (!extra.is_empty() || polls_by_default()),
            "connect over {transport} {extra:?}: {}",
            c.proc.stderr()
        );
        // A thread still polling uses about 1.5 s here; an idle connect 10 ms at most.
        assert!(
            used < 200,
            "connect over {transport} used {used} ms of CPU in 1.5 s with no traffic"
        );
    }
    // A window past the longest a worker accepts is refused before anything starts.
    let out = dev.sluice(&[
        "connect",
        "-target-id",
        "ttcp_1234567890",
        "-busy-poll-us",
        "1000001",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("1000001") && err.contains("busy-poll-us"),
        "the refusal names the value and the flag: {err}"
    );
}

#[test]
fn the_uring_driver_carries_every_transport_and_cancel_closes_its_connections() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &["-worker-allow-plaintext", "-io-driver", "uring"]);
    carries_ssh_over_every_transport_and_6_mb_over_tcp(&dev, &sshd);

    let mut conn = Connect::start(
        &dev,
        &[
            "connect",
            "-transport",
            "tcp",
            "-target-id",
            "ttcp_1234567890",
        ],
    );
    let mut live = Proc::spawn(sshd.ssh(conn.port, "echo started; sleep 60"));
    wait_for("ssh over tcp", Duration::from_secs(20), || {
        live.stdout().contains("started").then_some(())
    });
    dev.ok(&["sessions", "cancel", "-id", &conn.session_id]);
    // The live connection's io_uring reads are in flight when the cancel comes.
    assert!(!live.wait(Duration::from_secs(10)).success());
    conn.proc.wait(Duration::from_secs(10));
    let read = dev.wait_status(&conn.session_id, "terminated", Duration::from_secs(10));
    assert_eq!(
        Dev::field(&read, "Termination Reason").as_deref(),
        Some("canceled")
    );
    let endpoint = format!("Endpoint Address:  127.0.0.1:{}\n", sshd.port);
    assert!(read.contains(&endpoint), "{read}");
    assert!(
        !dev.proc.stderr().contains("io_uring is not available"),
        "the test ran on epoll: {}",
        dev.proc.stderr()
    );
}

/// A target that refuses connections: over every transport the worker refuses the proxied
/// connection, the local connection closes, and `connect` says why, naming the target.
#[test]
fn an_unreachable_target_is_refused_with_its_reason_over_every_transport() {
    use std::io::{Read, Write};
    let dead = sluice_e2e::free_port().to_string();
    let dev = dev_for_port(&dead);
    for transport in ["quic", "tls", "tcp"] {
        let conn = connect_over(&dev, transport, &[]);
        let mut local = app_connection(&conn);
        let _ = local.write_all(b"hello");
        let mut rest = Vec::new();
        let _ = local.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{transport}: nothing comes back");
        let said = format!("the worker could not connect to 127.0.0.1:{dead}");
        wait_for(
            &format!("{transport}: connect to report the refusal"),
            Duration::from_secs(10),
            || conn.proc.stderr().contains(&said).then_some(()),
        );
    }
}

/// An operator whose connection has stopped moving sends SIGUSR1 to `connect` and to the
/// worker: each prints its QUIC connection's counters and every relay idle for over a second,
/// with its bytes each way, and keeps running.
#[test]
fn sigusr1_prints_the_quic_connection_and_its_idle_relay_on_both_ends() {
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &[]);
    let conn = Connect::start(&dev, &["connect", "-target-id", "ttcp_1234567890"]);
    let (mut tcp, n) = idle_ssh_connection(conn.port);
    std::thread::sleep(Duration::from_millis(1500));
    for (who, p) in [("connect", &conn.proc), ("the worker", &dev.proc)] {
        sigusr1(p);
        let state = wait_for(
            &format!("{who}'s state report"),
            Duration::from_secs(10),
            || {
                let log = p.stderr();
                log.contains("sluice state: 1 relays live, 1 not moved for over a second")
                    .then_some(log)
            },
        );
        assert!(
            state.contains("sluice state: quic connection "),
            "{who}: {state}"
        );
        let relay = state
            .lines()
            .find(|l| l.starts_with("sluice state: relay on connection "))
            .unwrap_or_else(|| panic!("{who}: no relay line in {state}"));
        // `connect` wrote sshd's banner to its client; the worker read it from sshd.
        let moved = if who == "connect" {
            "socket to quinn: read 0, taken by quinn 0 (last".to_string()
        } else {
            format!("socket to quinn: read {n}, taken by quinn {n} (last")
        };
        assert!(relay.contains(&moved), "{who}: {relay}");
        if who == "connect" {
            assert!(relay.contains(&format!(", written {n} (last")), "{relay}");
        }
    }
    // Both still relay: the client's bytes reach sshd, which answers a bad identification.
    std::io::Write::write_all(&mut tcp, b"not ssh\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
    assert!(!rest.is_empty(), "sshd's answer did not come back");
}

/// A session starts with room for 256 streams (quinn allocates state for every stream the
/// limit allows), and the worker doubles the limit as half of it fills: 600 connections held
/// open at once in one QUIC session must all reach the target and come back.
#[test]
fn one_quic_session_holds_more_connections_open_than_its_first_stream_limit() {
    const CONNS: usize = 600;
    let _ = rlimit::increase_nofile_limit(20_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target = listener.local_addr().unwrap().port().to_string();
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dev = Dev::start(&[
        "-host-address",
        "127.0.0.1",
        "-target-default-port",
        &target,
    ]);
    let conn = Connect::start(&dev, &["connect", "-target-id", "ttcp_1234567890"]);
    let port = conn.port;
    let held = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut open = Vec::new();
        for i in 0..CONNS {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(&[i as u8]).await.unwrap();
            open.push(s);
        }
        // Every connection is still open; each gets its byte back.
        let mut back = 0;
        for (i, s) in open.iter_mut().enumerate() {
            let mut b = [0u8];
            match tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut b)).await {
                Ok(Ok(_)) if b[0] == i as u8 => back += 1,
                other => panic!("connection {i} of {CONNS}: {other:?}"),
            }
        }
        back
    });
    assert_eq!(held, CONNS);
}

/// One established TCP socket as `ss` shows it.
#[derive(Debug)]
struct SocketView {
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    pid: u32,
    /// The send buffer as the kernel counts it (twice what was set).
    send_buffer: u64,
    /// The receive buffer, counted the same way.
    receive_buffer: u64,
    /// Bytes the peer has acknowledged.
    bytes_acked: u64,
}

/// The established TCP sockets of the processes `pids` (`ss -tmnpO`, from iproute2).
fn tcp_sockets(pids: &[u32]) -> Vec<SocketView> {
    let out = std::process::Command::new("ss")
        .args(["-tminpHO", "state", "established"])
        .output()
        .expect("ss (iproute2) runs");
    assert!(out.status.success(), "ss: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let pid = l.split("pid=").nth(1)?.split(',').next()?.parse().ok()?;
            let tb = l.split(",tb").nth(1)?.split(',').next()?.parse().ok()?;
            let rb = l.split(",rb").nth(1)?.split(',').next()?.parse().ok()?;
            Some(SocketView {
                local: f.get(2)?.parse().ok()?,
                peer: f.get(3)?.parse().ok()?,
                pid,
                send_buffer: tb,
                receive_buffer: rb,
                bytes_acked: l
                    .split("bytes_acked:")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            })
        })
        .filter(|s| pids.contains(&s.pid))
        .collect()
}

/// Of `socks`, those of `connect` (`conn_pid`) whose peer is a socket of the worker
/// (`dev_pid`).
fn connect_to_worker(socks: &[SocketView], dev_pid: u32, conn_pid: u32) -> Vec<&SocketView> {
    socks
        .iter()
        .filter(|s| {
            s.pid == conn_pid
                && socks
                    .iter()
                    .any(|w| w.pid == dev_pid && w.local == s.peer && w.peer == s.local)
        })
        .collect()
}

/// Every socket a relay writes into between processes on this host gets the fixed near send
/// buffer (`net::NEAR_SEND_BUFFER`) instead of autotuning's 4 MiB: the
/// worker's to the client and to the target, `connect`'s to the worker and to the application.
/// Over `tcp`, whose bytes the relays splice on, `connect`'s socket to the application and the
/// worker's to the target also get a fixed receive buffer (`net::NEAR_SPLICED_RECEIVE_BUFFER`);
/// over `tls` they keep autotuning.
#[test]
fn relays_on_this_host_write_into_sockets_with_the_near_send_buffer() {
    use std::io::Read;
    // The kernel reports twice the figure it was given.
    const NEAR: u64 = 2 * sluice_dataplane::net::NEAR_SEND_BUFFER as u64;
    const SPLICED_RECEIVE: u64 = 2 * sluice_dataplane::net::NEAR_SPLICED_RECEIVE_BUFFER as u64;
    let sshd = Sshd::start();
    let dev = Dev::for_sshd(&sshd, &["-worker-allow-plaintext"]);
    for transport in ["tcp", "tls"] {
        let conn = connect_over(&dev, transport, &[]);
        let mut app = std::net::TcpStream::connect(("127.0.0.1", conn.port)).unwrap();
        app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // sshd's banner has come through the whole path.
        let mut banner = [0u8; 4];
        app.read_exact(&mut banner).unwrap();
        assert_eq!(&banner, b"SSH-", "{transport}");
        let (dev_pid, conn_pid) = (dev.proc.child.id(), conn.proc.child.id());
        let socks = tcp_sockets(&[dev_pid, conn_pid]);
        let app_side = app.local_addr().unwrap();
        let to_app: Vec<_> = socks
            .iter()
            .filter(|s| s.pid == conn_pid && s.peer == app_side)
            .collect();
        let to_target: Vec<_> = socks
            .iter()
            .filter(|s| s.pid == dev_pid && s.peer.port() == sshd.port)
            .collect();
        let to_worker = connect_to_worker(&socks, dev_pid, conn_pid);
        let to_client: Vec<_> = socks
            .iter()
            .filter(|s| s.pid == dev_pid && to_worker.iter().any(|c| c.local == s.peer))
            .collect();
        for (what, found) in [
            ("connect -> application", &to_app),
            ("worker -> target", &to_target),
            ("connect -> worker", &to_worker),
            ("worker -> connect", &to_client),
        ] {
            assert!(
                !found.is_empty(),
                "{transport}: no {what} socket in {socks:?}"
            );
            for s in found.iter() {
                assert_eq!(s.send_buffer, NEAR, "{transport}: {what} socket {s:?}");
            }
        }
        // The first socket of each direction, whose bytes are spliced on over tcp.
        for (what, found) in [
            ("connect's application", &to_app),
            ("the worker's target", &to_target),
        ] {
            for s in found.iter() {
                if transport == "tcp" {
                    assert_eq!(
                        s.receive_buffer, SPLICED_RECEIVE,
                        "tcp: {what} socket {s:?}"
                    );
                } else {
                    assert_ne!(
                        s.receive_buffer, SPLICED_RECEIVE,
                        "{transport}: {what} socket keeps autotuning {s:?}"
                    );
                }
            }
        }
        drop(app);
    }
}

/// `sessions read` reports each connection's bytes exactly, over every transport, counting
/// the first bytes a client sends with its request (the worker sends those to the target
/// while its connection opens) once and only once.
#[test]
fn a_connections_bytes_are_counted_exactly_over_every_transport() {
    use std::io::{Read, Write};
    let dev = dev_for_port(&sluice_e2e::echo_target().to_string());
    for transport in ["quic", "tls", "tcp"] {
        let conn = connect_over(&dev, transport, &[]);
        let mut local = app_connection(&conn);
        // Written before the connection is up, so it travels with the request.
        let first = vec![b'a'; 1_000];
        local.write_all(&first).unwrap();
        let mut back = vec![0u8; first.len()];
        local.read_exact(&mut back).unwrap();
        assert_eq!(back, first, "{transport}");
        let more = vec![b'b'; 70_000];
        local.write_all(&more).unwrap();
        let mut back = vec![0u8; more.len()];
        local.read_exact(&mut back).unwrap();
        assert_eq!(back, more, "{transport}");
        drop(local);
        let total = (first.len() + more.len()) as u64;
        let bytes = wait_for(
            &format!("{transport}: the connection to be recorded as closed"),
            Duration::from_secs(10),
            || {
                let c = dev.session_json(&conn.session_id)["connections"][0].clone();
                (c["status"] == "closed")
                    .then(|| (c["bytes_up"].as_u64(), c["bytes_down"].as_u64()))
            },
        );
        assert_eq!(bytes, (Some(total), Some(total)), "{transport}");
    }
}

/// `connect`'s established sockets to the worker of `dev`: local address and bytes acknowledged.
fn connect_sockets_to_worker(dev_pid: u32, conn_pid: u32) -> Vec<(std::net::SocketAddr, u64)> {
    let socks = tcp_sockets(&[dev_pid, conn_pid]);
    connect_to_worker(&socks, dev_pid, conn_pid)
        .into_iter()
        .map(|s| (s.local, s.bytes_acked))
        .collect()
}

/// Over `tls`, `connect` keeps the next connection's TCP and TLS handshakes done ahead of
/// need: one spare connection to the worker, made when the session opens and after each
/// connection the worker accepts. The next application's bytes go over it, and an idle
/// session lets it go (`client::SPARE_IDLE`), leaving only its control connection.
#[test]
fn over_tls_the_next_connection_to_the_worker_is_made_ahead_and_let_go_when_idle() {
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    let dev = dev_for_port(&sluice_e2e::echo_target().to_string());
    let conn = connect_over(&dev, "tls", &[]);
    let (dev_pid, conn_pid) = (dev.proc.child.id(), conn.proc.child.id());
    // The local addresses of `connect`'s connections to the worker, once there are `n`.
    let connections = |what: &str, n: usize, limit: Duration| -> BTreeSet<std::net::SocketAddr> {
        wait_for(what, limit, || {
            let p: BTreeSet<_> = connect_sockets_to_worker(dev_pid, conn_pid)
                .into_iter()
                .map(|(local, _)| local)
                .collect();
            (p.len() == n).then_some(p)
        })
    };
    let limit = Duration::from_secs(10);
    let opened = connections("the control connection and a spare", 2, limit);
    let echo = |app: &mut std::net::TcpStream, bytes: &[u8]| {
        app.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        app.read_exact(&mut back).unwrap();
        assert_eq!(back, bytes);
    };
    // The first application takes the spare made when the session opened, and a new one is
    // made behind it.
    let mut first = app_connection(&conn);
    echo(&mut first, b"first");
    let during = connections("a new spare behind the first connection", 3, limit);
    assert!(
        opened.is_subset(&during),
        "the first connection went over the spare: {opened:?} then {during:?}"
    );
    drop(first);
    let before = connections("the first connection to close", 2, limit);
    // The second application's bytes go over the connection already there.
    let mut second = app_connection(&conn);
    let bulk = vec![b's'; 200_000];
    echo(&mut second, &bulk);
    // Its acknowledgements may trail the echo by a moment.
    sluice_e2e::wait_for_or_explain(
        "one connection made before the second application to carry its bytes",
        limit,
        || {
            let carried = connect_sockets_to_worker(dev_pid, conn_pid)
                .iter()
                .filter(|(local, acked)| before.contains(local) && *acked >= bulk.len() as u64)
                .count();
            (carried == 1).then_some(())
        },
        || {
            format!(
                ": before it {before:?}, now {:?}",
                connect_sockets_to_worker(dev_pid, conn_pid)
            )
        },
    );
    drop(second);
    // Idle: only the control connection is left once the spare's time is up.
    let idle = sluice_dataplane::client::SPARE_IDLE + limit;
    connections("the spare to be let go", 1, idle);
    // And the session still works: a connection made without a spare.
    let mut third = app_connection(&conn);
    echo(&mut third, b"third");
}
