//! The numbers issue 3 asks the data plane to reach, checked against one run's figures, so that
//! every run says which are met instead of leaving it to be worked out by hand.
//!
//! Each target compares figures from the same run. One whose figures the run did not take (a
//! peer not installed, `--only`, `--quick`'s skipped stages) is reported as not measured,
//! never as met.

use serde::Serialize;

use crate::{PathResult, Results};

/// One target and how this run did against it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Target {
    /// The target as the issue states it.
    pub what: &'static str,
    /// The run's figure, in the target's terms ("1.52x haproxy+splice", "+12.3 us").
    pub measured: String,
    /// `None`: a figure it needs was not measured in this run.
    pub met: Option<bool>,
}

const WORKER_HOP: &str = "sluice worker hop, tcp";
const FULL_TCP: &str = "sluice full path, tcp";
const FULL_QUIC: &str = "sluice full path, quic";
const FULL_TLS: &str = "sluice full path, tls";
const HAPROXY_SPLICE: &str = "haproxy+splice";
const SSH: &str = "ssh -L aes128-gcm";

fn path<'a>(r: &'a Results, name: &str) -> Option<&'a PathResult> {
    r.paths.iter().find(|p| p.name == name)
}

/// A target whose figures are missing.
fn unmeasured(what: &'static str, missing: &str) -> Target {
    Target {
        what,
        measured: format!("not measured ({missing})"),
        met: None,
    }
}

/// Bulk of `ours` against `peer`'s, at least `ratio` times.
fn bulk_ratio(r: &Results, what: &'static str, ours: &str, peer: &str, ratio: f64) -> Target {
    match (path(r, ours), path(r, peer)) {
        (Some(o), Some(p)) if p.bulk_mb_s > 0.0 => {
            let x = o.bulk_mb_s / p.bulk_mb_s;
            Target {
                what,
                measured: format!(
                    "{x:.2}x {peer} ({:.0} against {:.0} MB/s)",
                    o.bulk_mb_s, p.bulk_mb_s
                ),
                met: Some(x >= ratio),
            }
        }
        (None, _) => unmeasured(what, ours),
        _ => unmeasured(what, peer),
    }
}

/// Every target of issue 3, in the order.
pub fn evaluate(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    t.push(bulk_ratio(
        r,
        "worker hop, tcp: bulk >= 1.3x HAProxy with splice",
        WORKER_HOP,
        HAPROXY_SPLICE,
        1.3,
    ));
    let what = "worker hop, tcp: <= 0.30 proxy CPU-s/GiB";
    t.push(
        match path(r, WORKER_HOP).and_then(|p| p.proxy_cpu_s_per_gib) {
            Some(c) => Target {
                what,
                measured: format!("{c:.2} CPU-s/GiB"),
                met: Some(c <= 0.30),
            },
            None => unmeasured(what, WORKER_HOP),
        },
    );
    let what = "worker hop, tcp: added p50 <= 15 us over direct";
    t.push(match path(r, WORKER_HOP) {
        Some(p) => {
            let one_cpu = p
                .one_cpu_added_p50_us
                .map_or(String::new(), |a| format!("; on one CPU {a:+.1} us"));
            Target {
                what,
                measured: format!("{:+.1} us{one_cpu}", p.added_p50_us),
                met: Some(p.added_p50_us <= 15.0),
            }
        }
        None => unmeasured(what, WORKER_HOP),
    });
    t.push(bulk_ratio(
        r,
        "full path, tcp: bulk >= 1.0x HAProxy with splice",
        FULL_TCP,
        HAPROXY_SPLICE,
        1.0,
    ));
    t.push(bulk_ratio(
        r,
        "full path, quic: bulk >= 1.5x ssh -L (aes128-gcm)",
        FULL_QUIC,
        SSH,
        1.5,
    ));
    let what = "full path, quic: added p50 <= half of ssh -L's";
    t.push(match (path(r, FULL_QUIC), path(r, SSH)) {
        (Some(q), Some(s)) => {
            let one_cpu = match (q.one_cpu_added_p50_us, s.one_cpu_added_p50_us) {
                (Some(a), Some(b)) => format!("; on one CPU {a:+.1} against {b:+.1} us"),
                _ => String::new(),
            };
            Target {
                what,
                measured: format!(
                    "{:+.1} against {:+.1} us{one_cpu}",
                    q.added_p50_us, s.added_p50_us
                ),
                met: Some(q.added_p50_us <= s.added_p50_us / 2.0),
            }
        }
        (None, _) => unmeasured(what, FULL_QUIC),
        _ => unmeasured(what, SSH),
    });
    t.push(bulk_ratio(
        r,
        "full path, tls: bulk >= 1.5x ssh -L (aes128-gcm)",
        FULL_TLS,
        SSH,
        1.5,
    ));
    // "1 RTT" is the path's own round trip (its closed-loop p50 in this run): the echoed byte
    // crosses the whole path (docs/design.md).
    let what = "new connection in an open quic session -> first echoed byte <= 1 RTT + 100 us";
    let setup = r.setup_us.iter().find(|(n, _)| n == FULL_QUIC);
    t.push(match (setup, path(r, FULL_QUIC)) {
        (Some((_, s)), Some(q)) => {
            let rtt = q.closed_loop_us.p50;
            Target {
                what,
                measured: format!("p50 {:.1} us = RTT {rtt:.1} + {:.1}", s.p50, s.p50 - rtt),
                met: Some(s.p50 <= rtt + 100.0),
            }
        }
        _ => unmeasured(what, "new quic connections"),
    });
    let what = "connect -> \"Proxy listening\" <= 30 ms";
    let mut ready = r.connect_ready_ms.clone();
    t.push(if ready.is_empty() {
        unmeasured(what, "connect starts")
    } else {
        let med = crate::measure::median(&mut ready);
        Target {
            what,
            measured: format!("median {med:.1} ms ({} starts)", ready.len()),
            met: Some(med <= 30.0),
        }
    });
    let what = "cancel -> all live connections closed, p99 <= 50 ms";
    t.push(match &r.cancel {
        Some(c) => Target {
            what,
            measured: format!("p99 {:.1} ms ({} sessions)", c.ms.p99, c.sessions),
            // `--quick` cancels a few sessions, whose p99 is their slowest: shown, not judged.
            met: (c.sessions >= crate::report::CANCEL_SESSIONS).then_some(c.ms.p99 <= 50.0),
        },
        None => unmeasured(what, "cancel latency"),
    });
    let what = "10,000 idle connections: <= 32 KiB each, no extra threads";
    t.push(match &r.idle {
        Some(i) => {
            let worker = i.worker_bytes_per_conn / 1024.0;
            let connect = i.connect_bytes_per_conn / 1024.0;
            Target {
                what,
                measured: format!(
                    "{} connections: worker {worker:.1} KiB, {:+} threads; connect {connect:.1} KiB, {:+} threads",
                    i.connections, i.worker_extra_threads, i.connect_extra_threads
                ),
                // `--quick` holds fewer connections open: the figure is shown, not judged.
                met: (i.connections >= crate::report::IDLE_CONNECTIONS).then_some(
                    worker <= 32.0
                        && connect <= 32.0
                        && i.worker_extra_threads <= 0
                        && i.connect_extra_threads <= 0,
                ),
            }
        }
        None => unmeasured(what, "idle connections"),
    });
    t
}

/// The targets as lines for the run's table; a `--quick` run's figures are indicative only.
pub fn lines(targets: &[Target], quick: bool) -> String {
    let met = targets.iter().filter(|t| t.met == Some(true)).count();
    let measured = targets.iter().filter(|t| t.met.is_some()).count();
    let mut s = format!(
        "\nissue 3's targets: {met} of {measured} measured met ({} in all){}\n",
        targets.len(),
        if quick {
            "; a --quick run, so indicative only"
        } else {
            ""
        }
    );
    for t in targets {
        let mark = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        };
        s.push_str(&format!("  {mark:<8} {} -- {}\n", t.what, t.measured));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Percentiles;

    fn path_result(name: &str, bulk: f64, cpu: Option<f64>, p50: f64, added: f64) -> PathResult {
        PathResult {
            name: name.into(),
            bulk_mb_s: bulk,
            bulk_vs_direct: 0.0,
            proxy_cpu_s_per_gib: cpu,
            download_mb_s: bulk,
            download_cpu_s_per_gib: cpu,
            closed_loop_us: Percentiles {
                p50,
                ..Percentiles::default()
            },
            added_p50_us: added,
            open_loop_us: Percentiles::default(),
            one_cpu_us: None,
            one_cpu_added_p50_us: None,
        }
    }

    fn run() -> Results {
        Results {
            paths: vec![
                path_result("direct TCP", 5000.0, None, 5.0, 0.0),
                path_result(WORKER_HOP, 3000.0, Some(0.25), 20.0, 15.0),
                path_result(FULL_TCP, 1500.0, Some(0.6), 30.0, 25.0),
                path_result(FULL_QUIC, 1400.0, Some(1.0), 35.0, 30.0),
                path_result(FULL_TLS, 1600.0, Some(1.1), 30.0, 25.0),
                path_result(HAPROXY_SPLICE, 2000.0, Some(0.4), 15.0, 10.0),
                path_result(SSH, 1000.0, Some(1.5), 110.0, 105.0),
            ],
            setup_us: vec![(
                FULL_QUIC.into(),
                Percentiles {
                    p50: 170.0,
                    ..Percentiles::default()
                },
            )],
            connect_ready_ms: vec![9.0, 8.0, 40.0],
            cancel: Some(crate::report::Cancel {
                sessions: crate::report::CANCEL_SESSIONS,
                connections_each: crate::report::CANCEL_CONNECTIONS,
                ms: Percentiles {
                    p99: 4.0,
                    ..Percentiles::default()
                },
            }),
            idle: Some(crate::report::Idle {
                connections: crate::report::IDLE_CONNECTIONS,
                worker_bytes_per_conn: 14.0 * 1024.0,
                worker_extra_threads: 0,
                connect_bytes_per_conn: 9.0 * 1024.0,
                connect_extra_threads: 0,
            }),
            ..Results::default()
        }
    }

    fn verdicts(r: &Results) -> Vec<Option<bool>> {
        evaluate(r).iter().map(|t| t.met).collect()
    }

    #[test]
    fn each_target_is_judged_against_the_figures_of_the_same_run() {
        let r = run();
        let t = evaluate(&r);
        assert_eq!(t.len(), 11);
        // Worker hop 1.5x haproxy+splice, 0.25 CPU-s/GiB, +15.0 us (the bound itself); full
        // tcp 0.75x; quic 1.4x ssh and +30 against +105 us; tls 1.6x; new connection 170 us
        // against 35 + 100; connect median 9 ms; cancel 4 ms; idle 14 and 9 KiB.
        assert_eq!(
            verdicts(&r),
            [true, true, true, false, false, true, true, false, true, true, true].map(Some)
        );
        assert_eq!(
            t[0].measured,
            "1.50x haproxy+splice (3000 against 2000 MB/s)"
        );
        assert_eq!(t[7].measured, "p50 170.0 us = RTT 35.0 + 135.0");
        let text = lines(&t, false);
        assert!(text.contains("issue 3's targets: 8 of 11 measured met (11 in all)"));
        assert!(text.contains("NOT met  full path, quic: bulk >= 1.5x ssh -L"));
    }

    #[test]
    fn a_figure_just_past_its_bound_fails_the_target() {
        let mut r = run();
        r.paths[1].added_p50_us = 15.1;
        r.paths[1].proxy_cpu_s_per_gib = Some(0.31);
        r.paths[3].added_p50_us = 52.6; // ssh's +105 halved is 52.5
        r.cancel.as_mut().unwrap().ms.p99 = 50.5;
        r.idle.as_mut().unwrap().connect_extra_threads = 1;
        let v = verdicts(&r);
        assert_eq!(v[1], Some(false));
        assert_eq!(v[2], Some(false));
        assert_eq!(v[5], Some(false));
        assert_eq!(v[9], Some(false));
        assert_eq!(v[10], Some(false));
    }

    #[test]
    fn fewer_idle_connections_than_the_target_names_are_shown_but_not_judged() {
        let mut r = run();
        r.idle.as_mut().unwrap().connections = 500;
        let t = evaluate(&r);
        assert_eq!(t[10].met, None);
        assert!(t[10]
            .measured
            .starts_with("500 connections: worker 14.0 KiB"));
    }

    #[test]
    fn a_cancel_p99_from_a_few_sessions_is_shown_but_not_judged() {
        let mut r = run();
        assert_eq!(evaluate(&r)[9].measured, "p99 4.0 ms (200 sessions)");
        // `--quick`: three sessions, whose p99 is the slowest of three.
        r.cancel.as_mut().unwrap().sessions = 3;
        let t = evaluate(&r);
        assert_eq!(t[9].met, None);
        assert_eq!(t[9].measured, "p99 4.0 ms (3 sessions)");
    }

    #[test]
    fn a_target_whose_figures_were_not_taken_is_never_reported_met() {
        let mut r = run();
        // No peers installed, `--only quic`: no haproxy, no ssh, no session-level stages.
        r.paths
            .retain(|p| p.name == "direct TCP" || p.name == FULL_QUIC);
        r.connect_ready_ms.clear();
        r.cancel = None;
        r.idle = None;
        let t = evaluate(&r);
        // Only the new-connection target has its figures.
        let v: Vec<_> = t.iter().map(|t| t.met).collect();
        assert_eq!(v.iter().filter(|m| m.is_some()).count(), 1);
        assert_eq!(v[7], Some(false));
        assert_eq!(
            t[4].measured, "not measured (ssh -L aes128-gcm)",
            "quic against ssh names what is missing"
        );
        assert_eq!(t[0].measured, "not measured (sluice worker hop, tcp)");
        assert!(lines(&t, true).contains("0 of 1 measured met (11 in all); a --quick run"));
    }
}
