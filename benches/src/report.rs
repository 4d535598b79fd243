//! Control-plane measurements, idle-connection cost, and the table, JSON and plot of a run.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::measure::Percentiles;
use crate::procs::rss_and_threads;
use crate::sluice::Dev;
use crate::Results;

/// CPU model, cores and kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, kernel {}", kernel.trim())
}

/// What else the machine was doing when the run started: the 1-minute load average, and how
/// many processes other than this one run a `sluice` program (a `sluice dev` or `connect` left
/// over from earlier work idles but still wakes up, and has disturbed runs before); and which
/// `sluice` binary is measured (the plain release build, or scripts/build-pgo.sh's).
pub fn conditions(bin: &std::path::Path) -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let others = crate::procs::other_sluice_processes();
    format!(
        "load average {load} at start, {others} other sluice processes; sluice binary {}{}",
        bin.display(),
        idle_vcpus()
    )
}

/// How this machine's idle CPUs wait, when its kernel says: on a VM whose guest halt polling
/// is off, every wake-up of an idle vCPU goes through the host. Here that made new connections
/// through Sluice take twice as long beyond their round trip, and the peers' round trips
/// several times as long, as with the kernel's default of 200 µs (docs/tuning.md).
fn idle_vcpus() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    match read("/sys/devices/system/cpu/cpuidle/current_driver") {
        Some(d) if d == "haltpoll" => format!(
            "; idle CPUs: cpuidle haltpoll, guest_halt_poll_ns {}",
            read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").unwrap_or("?".into())
        ),
        Some(d) => format!("; idle CPUs: cpuidle {d}"),
        None => String::new(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Durable authorize-session calls per second with 64 concurrent clients for `secs`.
pub fn authorize_rate(dev: &Dev, secs: u64) -> anyhow::Result<f64> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/targets/ttcp_1234567890:authorize-session", dev.api);
        let ok = Arc::new(AtomicU64::new(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (client, url, ok, bearer) =
                (client.clone(), url.clone(), ok.clone(), dev.bearer.clone());
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let resp = client
                        .post(&url)
                        .bearer_auth(&bearer)
                        .body("{}")
                        .send()
                        .await;
                    if matches!(resp, Ok(r) if r.status().is_success()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    })
}

fn echo_conn(port: u16) -> anyhow::Result<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"Ex")?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    Ok(c)
}

/// Sessions a full run cancels. Each gives one figure (when the last of its connections
/// closed), so the p99 the issue names needs a few hundred: with the 20 of runs before
/// 2026-12-02 it was simply the slowest of 20.
pub const CANCEL_SESSIONS: usize = 200;
/// Live connections in each cancelled session.
pub const CANCEL_CONNECTIONS: usize = 20;

/// Cancel → every live connection closed, over a number of sessions.
#[derive(Debug, Clone, Serialize)]
pub struct Cancel {
    /// Sessions cancelled, one figure each.
    pub sessions: usize,
    /// Live connections in each session when it was cancelled.
    pub connections_each: usize,
    /// Time from the cancel request to the last of a session's connections closing, ms.
    pub ms: Percentiles,
}

/// Time from the cancel request to the last of `conns` live connections closing, for `runs`
/// sessions.
pub fn cancel_latency(dev: &Dev, runs: usize, conns: usize) -> anyhow::Result<Cancel> {
    let rt = runtime()?;
    let client = reqwest::Client::new();
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for _ in 0..runs {
        let (_proc, port, sid, _) = dev.connect("quic")?;
        let live: Vec<TcpStream> = (0..conns)
            .map(|_| echo_conn(port))
            .collect::<anyhow::Result<_>>()?;
        let start = Instant::now();
        let waiters: Vec<_> = live
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                    start.elapsed()
                })
            })
            .collect();
        rt.block_on(
            client
                .post(format!("{}/v1/sessions/{sid}:cancel", dev.api))
                .bearer_auth(&dev.bearer)
                .body("{}")
                .send(),
        )?
        .error_for_status()?;
        let slowest = waiters
            .into_iter()
            .map(|w| w.join().unwrap_or(Duration::from_secs(10)))
            .max()
            .unwrap_or_default();
        h.record(slowest.as_nanos() as u64)?;
    }
    let p = Percentiles::of(&h);
    // Percentiles::of reports microseconds; this figure is in milliseconds.
    Ok(Cancel {
        sessions: runs,
        connections_each: conns,
        ms: Percentiles {
            p50: p.p50 / 1000.0,
            p90: p.p90 / 1000.0,
            p99: p.p99 / 1000.0,
            p999: p.p999 / 1000.0,
            max: p.max / 1000.0,
        },
    })
}

/// Idle connections a full run holds open (issue 3's figure); `--quick` holds 500.
pub const IDLE_CONNECTIONS: usize = 10_000;

/// Memory and threads for idle proxied connections.
#[derive(Debug, Serialize)]
pub struct Idle {
    pub connections: usize,
    pub worker_bytes_per_conn: f64,
    pub worker_extra_threads: i64,
    pub connect_bytes_per_conn: f64,
    pub connect_extra_threads: i64,
}

pub fn idle(dev: &Dev, n: usize) -> anyhow::Result<Idle> {
    let (p, port, _, _) = dev.connect("quic")?;
    let worker = dev.proc.pid();
    let (w0, wt0) = settled_rss_and_threads(worker);
    let (c0, ct0) = rss_and_threads(p.pid());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(echo_conn(port).with_context(|| format!("idle connection {i}"))?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (w1, wt1) = rss_and_threads(worker);
    let (c1, ct1) = rss_and_threads(p.pid());
    drop(conns);
    Ok(Idle {
        connections: n,
        worker_bytes_per_conn: (w1 as f64 - w0 as f64) / n as f64,
        worker_extra_threads: wt1 as i64 - wt0 as i64,
        connect_bytes_per_conn: (c1 as f64 - c0 as f64) / n as f64,
        connect_extra_threads: ct1 as i64 - ct0 as i64,
    })
}

/// `pid`'s resident memory and threads once its memory has stopped falling. The worker gives
/// memory freed by the stages before back to the system for some seconds after they end
/// (`dataplane::trim`, a trim every 2 s); a baseline taken while that goes on made 500 idle
/// connections in a `--quick` run cost "-1.4 KiB" each. Waits at most 12 s.
fn settled_rss_and_threads(pid: u32) -> (u64, u64) {
    const TRIM_PERIOD: Duration = Duration::from_millis(2_100);
    const STEADY: u64 = 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut last = rss_and_threads(pid);
    loop {
        std::thread::sleep(TRIM_PERIOD);
        let now = rss_and_threads(pid);
        if now.0.abs_diff(last.0) <= STEADY || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// The run as a text table.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nSluice benchmark, {} ({}){}\n{}",
        r.date,
        r.machine,
        if r.quick { ", QUICK" } else { "" },
        r.conditions
    );
    let _ = writeln!(
        s,
        "\n{:<32} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "path",
        "bulk MB/s",
        "x direct",
        "CPU-s/GiB",
        "p50 us",
        "p99 us",
        "p99.9",
        "max us",
        "+p50 us",
        "open p99",
        "open max"
    );
    for p in &r.paths {
        let cpu = p
            .proxy_cpu_s_per_gib
            .map_or("-".into(), |c| format!("{c:.2}"));
        let c = &p.closed_loop_us;
        let _ = writeln!(
            s,
            "{:<32} {:>9.0} {:>8.2} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>9.0} {:>8.1} {:>9.1} {:>9.0}",
            p.name,
            p.bulk_mb_s,
            p.bulk_vs_direct,
            cpu,
            c.p50,
            c.p99,
            c.p999,
            c.max,
            p.added_p50_us,
            p.open_loop_us.p99,
            p.open_loop_us.max
        );
    }
    let direct_down = r
        .paths
        .first()
        .map(|p| p.download_mb_s)
        .filter(|&d| d > 0.0);
    let _ = writeln!(
        s,
        "\nbulk downloads (target -> application; the same rounds, each right after the upload):\n\
         {:<32} {:>9} {:>8} {:>9}",
        "path", "MB/s", "x direct", "CPU-s/GiB"
    );
    for p in &r.paths {
        let cpu = p
            .download_cpu_s_per_gib
            .map_or("-".into(), |c| format!("{c:.2}"));
        let x = direct_down.map_or("-".into(), |d| format!("{:.2}", p.download_mb_s / d));
        let _ = writeln!(
            s,
            "{:<32} {:>9.0} {:>8} {:>9}",
            p.name, p.download_mb_s, x, cpu
        );
    }
    if r.paths.iter().any(|p| p.one_cpu_us.is_some()) {
        let _ = writeln!(
            s,
            "\nround trips again with every process on one CPU (no wake-up of an idle CPU):\n\
             {:<32} {:>8} {:>8} {:>8} {:>8}",
            "path", "p50 us", "p99 us", "p99.9", "+p50 us"
        );
        for p in &r.paths {
            if let (Some(c), Some(added)) = (&p.one_cpu_us, p.one_cpu_added_p50_us) {
                let _ = writeln!(
                    s,
                    "{:<32} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                    p.name, c.p50, c.p99, c.p999, added
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nnew connection -> first echoed byte (us; \"beyond\": its p50 less the same path's \
         round-trip p50 above; \"paced\": with a pause of {} ms before each connection):",
        crate::measure::SETUP_GAP.as_millis()
    );
    for (name, p) in &r.setup_us {
        let beyond = r
            .paths
            .iter()
            .find(|path| &path.name == name)
            .map_or(String::new(), |path| {
                format!("  beyond {:>6.1}", p.p50 - path.closed_loop_us.p50)
            });
        let paced = r
            .setup_paced_us
            .iter()
            .find(|(n, _)| n == name)
            .map_or(String::new(), |(_, q)| {
                format!("  paced p50 {:>7.1}  p99 {:>7.1}", q.p50, q.p99)
            });
        let _ = writeln!(
            s,
            "  {name:<26} p50 {:>8.1}  p99 {:>8.1}  max {:>8.0}{beyond}{paced}",
            p.p50, p.p99, p.max
        );
    }
    let mut ready = r.connect_ready_ms.clone();
    if !ready.is_empty() {
        let med = crate::measure::median(&mut ready);
        // Sorted by `median`; the 90th percentile shows a slow start that is not rare, which
        // the median hides.
        let p90 = ready[(ready.len() * 9 / 10).min(ready.len() - 1)];
        let _ = writeln!(
            s,
            "\nconnect start -> \"Proxy listening\": median {med:.1} ms, p90 {p90:.1} ms, \
             max {:.1} ms ({} runs)",
            ready.last().copied().unwrap_or(0.0),
            ready.len()
        );
    }
    if r.authorize_per_s > 0.0 {
        let _ = writeln!(
            s,
            "durable authorize-session: {:.0}/s (64 concurrent clients)",
            r.authorize_per_s
        );
    }
    if let Some(c) = &r.cancel {
        let _ = writeln!(
            s,
            "cancel -> all live connections closed (ms; {} sessions of {} connections): p50 {:.1}  p99 {:.1}  max {:.1}",
            c.sessions, c.connections_each, c.ms.p50, c.ms.p99, c.ms.max
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            s,
            "{} idle connections: worker {:.1} KiB/conn, {:+} threads; connect {:.1} KiB/conn, {:+} threads",
            i.connections,
            i.worker_bytes_per_conn / 1024.0,
            i.worker_extra_threads,
            i.connect_bytes_per_conn / 1024.0,
            i.connect_extra_threads
        );
    }
    for sk in &r.skipped {
        let _ = writeln!(s, "skipped {sk}");
    }
    s
}

/// Writes `results.json` and `latency.svg` into `dir`.
pub fn write(r: &Results, dir: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    let svg = dir.join("latency.svg");
    let root = SVGBackend::new(&svg, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = r
        .paths
        .iter()
        .map(|p| {
            let one_cpu = p.one_cpu_us.as_ref().map_or(0.0, |c| c.max);
            p.closed_loop_us.max.max(p.open_loop_us.p999).max(one_cpu)
        })
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Round-trip latency, closed loop ({}); thin: every process on one CPU",
                r.date
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, (5f64..top * 1.5).log_scale())?;
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| {
            labels
                .get(x.round() as usize)
                .copied()
                .unwrap_or("")
                .to_owned()
        })
        .y_desc("microseconds")
        .draw()?;
    // One point per percentile label, floored at the axis' 5 µs.
    let points = |c: &Percentiles| -> Vec<(f64, f64)> {
        [c.p50, c.p90, c.p99, c.p999, c.max]
            .iter()
            .enumerate()
            .map(|(x, y)| (x as f64, y.max(5.0)))
            .collect()
    };
    for (i, p) in r.paths.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points(&p.closed_loop_us),
                color.stroke_width(2),
            ))?
            .label(p.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if let Some(c) = &p.one_cpu_us {
            chart.draw_series(LineSeries::new(points(c), color.stroke_width(1)))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
