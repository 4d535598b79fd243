//! `sluice-bench`: Sluice as users run it (`sluice dev` + `sluice connect`, real processes),
//! next to direct TCP and, when installed, HAProxy, nginx, socat and `ssh -L`, all in one run.
//! Every figure is also given as a ratio to direct TCP (or to a peer) measured in the same run,
//! because absolute numbers on these shared machines drift by 2x.
//!
//! `sluice-bench [--quick] [--out DIR] [--sluice PATH] [--only NAME,...]`. `--quick` finishes in
//! well under a minute and runs in CI so the harness keeps working; a full run is what
//! `benches/RESULTS.md` records. Writes `DIR/results.json` and `DIR/latency.svg`. `--only`
//! measures just the paths whose names contain one of the words given (direct TCP always, as
//! the reference) and skips the session-level stages: for A/B runs and profiles of one path.
//! The table ends with issue 3's targets judged against the run's own figures (`targets.rs`).
#![forbid(unsafe_code)]

mod measure;
mod peers;
mod procs;
mod report;
mod sluice;
mod target;
mod targets;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use measure::Percentiles;

struct Opts {
    quick: bool,
    out: PathBuf,
    sluice: Option<PathBuf>,
    /// Measure only the durable authorize-session rate, for this many seconds.
    authorize_only: Option<u64>,
    /// Measure only the paths whose names contain one of these (and direct TCP).
    only: Vec<String>,
}

impl Opts {
    fn wants(&self, path: &str) -> bool {
        path == "direct TCP" || self.only.is_empty() || self.only.iter().any(|w| path.contains(w))
    }
}

fn parse_opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        quick: false,
        out: PathBuf::from("benches/out"),
        sluice: None,
        authorize_only: None,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = args.next().context("--out needs a directory")?.into(),
            "--sluice" => o.sluice = Some(args.next().context("--sluice needs a path")?.into()),
            "--authorize-only" => {
                o.authorize_only = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .context("--authorize-only needs a number of seconds")?,
                )
            }
            "--only" => {
                o.only = args
                    .next()
                    .context("--only needs path names, e.g. --only \"worker hop,quic\"")?
                    .split(',')
                    .map(|w| w.trim().to_owned())
                    .filter(|w| !w.is_empty())
                    .collect()
            }
            "--target-server" => {
                // The target runs in its own process so that 10,000 idle connections fit each
                // process's descriptor limit (20,000 here, and not raisable in this container).
                println!("{}", target::start()?);
                loop {
                    std::thread::park();
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: sluice-bench [--quick] [--out DIR] [--sluice PATH] [--only NAME,...] [--authorize-only SECS]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(o)
}

/// What one path measured.
#[derive(Debug, Serialize)]
pub struct PathResult {
    pub name: String,
    pub bulk_mb_s: f64,
    pub bulk_vs_direct: f64,
    pub proxy_cpu_s_per_gib: Option<f64>,
    /// The same rounds' downloads (target → application): MB/s, and the proxy's CPU.
    pub download_mb_s: f64,
    pub download_cpu_s_per_gib: Option<f64>,
    pub closed_loop_us: Percentiles,
    pub added_p50_us: f64,
    pub open_loop_us: Percentiles,
    /// Round trips again with every process of the run on one CPU ([`procs::OneCpu`]);
    /// `None` on a one-CPU machine or when pinning failed.
    pub one_cpu_us: Option<Percentiles>,
    /// `one_cpu_us`'s p50 less direct TCP's, both on one CPU.
    pub one_cpu_added_p50_us: Option<f64>,
}

#[derive(Debug, Serialize, Default)]
pub struct Results {
    pub date: String,
    pub machine: String,
    /// [`report::conditions`] when the run started.
    pub conditions: String,
    pub quick: bool,
    pub paths: Vec<PathResult>,
    pub setup_us: Vec<(String, Percentiles)>,
    /// The same with a pause of [`measure::SETUP_GAP`] before each connection, as an
    /// application that is not opening connections back to back makes them.
    pub setup_paced_us: Vec<(String, Percentiles)>,
    pub connect_ready_ms: Vec<f64>,
    pub authorize_per_s: f64,
    pub cancel: Option<report::Cancel>,
    pub idle: Option<report::Idle>,
    pub skipped: Vec<String>,
    /// Issue 3's targets against this run's figures ([`targets::evaluate`]).
    pub targets: Vec<targets::Target>,
}

type DialFn<'a> = Box<dyn Fn() -> anyhow::Result<TcpStream> + Sync + 'a>;

struct Path<'a> {
    name: String,
    dial: DialFn<'a>,
    pids: Vec<u32>,
    /// A peer's failure is reported and skipped; Sluice's fails the run.
    peer: bool,
}

fn dial_port(port: u16) -> impl Fn() -> anyhow::Result<TcpStream> + Sync {
    move || Ok(TcpStream::connect(("127.0.0.1", port))?)
}

/// What the bulk rounds measured on one path.
struct Bulk {
    /// Median of the rounds, MB/s.
    mb_s: f64,
    /// CPU-seconds per GiB of the path's processes over all its rounds.
    cpu_s_per_gib: f64,
    /// The same for the downloads, taken right after each upload.
    down_mb_s: f64,
    down_cpu_s_per_gib: f64,
}

/// Bulk throughput of every path, in rounds that go round the paths in turn (starting one
/// further each round), and the CPU the path's processes spent in its rounds. Until
/// 2026-12-02 each path ran all its rounds before the next path started, so a ratio of two
/// paths compared rounds taken up to a minute apart on a machine whose load drifts.
/// Each path's turn is an upload (application → target) and then a download (target →
/// application) of the same size. Returns one result per path, or the first error of a path.
fn bulk_rounds(paths: &[&Path<'_>], quick: bool) -> Vec<anyhow::Result<Bulk>> {
    let (rounds, bytes) = if quick {
        (1, 128u64 << 20)
    } else {
        (5, 1u64 << 30)
    };
    type Rates = (Vec<f64>, Vec<f64>);
    let mut rates: Vec<anyhow::Result<Rates>> =
        paths.iter().map(|_| Ok((Vec::new(), Vec::new()))).collect();
    let mut cpu = vec![(0.0, 0.0); paths.len()];
    for round in 0..rounds {
        eprintln!("bulk round {} of {rounds}, all paths in turn", round + 1);
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let Ok((up, down)) = &mut rates[i] else {
                continue;
            };
            let p = paths[i];
            let cpu0 = procs::tree_cpu(&p.pids);
            let upload = measure::bulk(&*p.dial, bytes)
                .with_context(|| format!("bulk upload through {}", p.name));
            let cpu1 = procs::tree_cpu(&p.pids);
            let both = upload.and_then(|u| {
                measure::download(&*p.dial, bytes)
                    .with_context(|| format!("bulk download through {}", p.name))
                    .map(|d| (u, d))
            });
            let cpu2 = procs::tree_cpu(&p.pids);
            match both {
                Ok((u, d)) => {
                    up.push(u);
                    down.push(d);
                    cpu[i].0 += cpu1 - cpu0;
                    cpu[i].1 += cpu2 - cpu1;
                }
                Err(e) => rates[i] = Err(e),
            }
        }
    }
    let gib = (bytes * rounds as u64) as f64 / (1u64 << 30) as f64;
    rates
        .into_iter()
        .zip(cpu)
        .map(|(r, (cpu_up, cpu_down))| {
            r.map(|(mut up, mut down)| Bulk {
                mb_s: measure::median(&mut up),
                cpu_s_per_gib: cpu_up / gib,
                down_mb_s: measure::median(&mut down),
                down_cpu_s_per_gib: cpu_down / gib,
            })
        })
        .collect()
}

/// A path's figures from its bulk rounds, and its open-loop latency.
fn measure_path(
    p: &Path<'_>,
    quick: bool,
    direct: Option<f64>,
    bulk: Bulk,
) -> anyhow::Result<PathResult> {
    let (rate, secs) = if quick { (2_000, 1) } else { (5_000, 4) };
    let open = Percentiles::of(&measure::open_loop(
        &*p.dial,
        rate,
        Duration::from_secs(secs),
    )?);
    let direct_bulk = direct.unwrap_or(bulk.mb_s);
    Ok(PathResult {
        name: p.name.clone(),
        bulk_mb_s: bulk.mb_s,
        bulk_vs_direct: bulk.mb_s / direct_bulk,
        proxy_cpu_s_per_gib: (!p.pids.is_empty()).then_some(bulk.cpu_s_per_gib),
        download_mb_s: bulk.down_mb_s,
        download_cpu_s_per_gib: (!p.pids.is_empty()).then_some(bulk.down_cpu_s_per_gib),
        // Filled in by `closed_loops`.
        added_p50_us: 0.0,
        closed_loop_us: Percentiles::default(),
        open_loop_us: open,
        one_cpu_us: None,
        one_cpu_added_p50_us: None,
    })
}

/// Closed-loop latency of every path, `n` round trips each, taken in blocks that go round the
/// paths in turn (starting one further each block): the machine's load drifts within seconds,
/// and measured path after path, that drift showed up as ±15 µs in one path's added p50.
/// Returns one histogram per path, or the first error of a path.
fn closed_loops(
    paths: &[&Path<'_>],
    n: usize,
    blocks: usize,
) -> Vec<anyhow::Result<hdrhistogram::Histogram<u64>>> {
    let mut out: Vec<anyhow::Result<hdrhistogram::Histogram<u64>>> =
        paths.iter().map(|_| Ok(measure::histogram())).collect();
    for block in 0..blocks {
        for k in 0..paths.len() {
            let i = (block + k) % paths.len();
            let Ok(h) = &mut out[i] else { continue };
            match measure::closed_loop(&*paths[i].dial, n / blocks) {
                Ok(b) => {
                    if let Err(e) = h.add(&b) {
                        out[i] = Err(e.into());
                    }
                }
                Err(e) => out[i] = Err(e.context(format!("round trips through {}", paths[i].name))),
            }
        }
    }
    out
}

fn run(o: &Opts) -> anyhow::Result<Results> {
    let bin = procs::sluice_bin(o.sluice.as_deref())?;
    // Before this run starts processes of its own.
    let conditions = report::conditions(&bin);
    // 10,000 idle connections need ~20,000 descriptors here (client and target ends); as root
    // raise the hard limit too.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, 100_000, 100_000).is_err() {
        let _ = rlimit::increase_nofile_limit(100_000);
    }
    let mut target_proc = procs::Proc::spawn({
        let mut c = std::process::Command::new(std::env::current_exe()?);
        c.arg("--target-server");
        c
    })?;
    let target: u16 = target_proc.wait_line(Duration::from_secs(10), |l| l.trim().parse().ok())?;
    let dev = sluice::Dev::start(&bin, target)?;
    let mut r = Results {
        date: String::from_utf8(
            std::process::Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d %H:%M UTC")
                .output()?
                .stdout,
        )?
        .trim()
        .to_owned(),
        machine: report::machine(),
        conditions,
        quick: o.quick,
        ..Default::default()
    };

    // Connect processes, one per transport; their start-up time is a measurement too.
    let mut connects = Vec::new();
    for t in ["quic", "tls", "tcp"] {
        let (p, port, sid, ready) = dev.connect(t)?;
        if t == "quic" {
            r.connect_ready_ms.push(ready.as_secs_f64() * 1000.0);
        }
        connects.push((t, p, port, sid));
    }
    for _ in 0..if o.quick { 2 } else { 19 } {
        let (_p, _, _, ready) = dev.connect("quic")?;
        r.connect_ready_ms.push(ready.as_secs_f64() * 1000.0);
    }
    let token = dev.token()?;
    let nonce: [u8; 16] = rand::random();
    let worker = dev.worker.clone();
    let hop = move || sluice::worker_hop(&worker, &token, nonce);
    let (peers, skipped) = peers::start_all(target, o.quick, |name| o.wants(name));
    r.skipped = skipped;

    let mut paths: Vec<Path<'_>> = vec![Path {
        name: "direct TCP".into(),
        dial: Box::new(dial_port(target)),
        pids: vec![],
        peer: false,
    }];
    paths.push(Path {
        name: "sluice worker hop, tcp".into(),
        dial: Box::new(hop),
        pids: vec![dev.proc.pid()],
        peer: false,
    });
    // The same hop on a second `sluice dev` whose worker runs the io_uring driver: the
    // measurement that picks `-io-driver`'s default.
    let uring_name = "sluice worker hop, tcp, io_uring";
    let uring_dev = if o.wants(uring_name) {
        Some(sluice::Dev::start_with(
            &bin,
            target,
            &["-io-driver", "uring"],
        )?)
    } else {
        None
    };
    if let Some(ud) = &uring_dev {
        let token = ud.token()?;
        let worker = ud.worker.clone();
        paths.push(Path {
            name: uring_name.into(),
            dial: Box::new(move || sluice::worker_hop(&worker, &token, nonce)),
            pids: vec![ud.proc.pid()],
            peer: false,
        });
    }
    for (t, p, port, _) in &connects {
        paths.push(Path {
            name: format!("sluice full path, {t}"),
            dial: Box::new(dial_port(*port)),
            pids: vec![dev.proc.pid(), p.pid()],
            peer: false,
        });
    }
    for peer in &peers {
        paths.push(Path {
            name: peer.name.clone(),
            dial: Box::new(dial_port(peer.port)),
            pids: peer.pids(),
            peer: true,
        });
    }
    paths.retain(|p| o.wants(&p.name));
    let mut direct = None;
    let mut measured = Vec::new();
    let all: Vec<&Path<'_>> = paths.iter().collect();
    for (p, bulk) in paths.iter().zip(bulk_rounds(&all, o.quick)) {
        eprintln!("measuring {}", p.name);
        let res = match bulk.and_then(|b| measure_path(p, o.quick, direct, b)) {
            Ok(res) => res,
            Err(e) if p.peer => {
                r.skipped.push(format!("{}: {e:#}", p.name));
                continue;
            }
            Err(e) => return Err(e),
        };
        if direct.is_none() {
            direct = Some(res.bulk_mb_s);
        }
        eprintln!(
            "  {:.0} MB/s ({:.2}x direct){}; download {:.0} MB/s",
            res.bulk_mb_s,
            res.bulk_vs_direct,
            res.proxy_cpu_s_per_gib
                .map_or(String::new(), |c| format!(", proxy CPU {c:.2} s/GiB")),
            res.download_mb_s
        );
        measured.push((p, res));
    }
    eprintln!("measuring round trips, all paths in turn");
    let (n, blocks) = if o.quick { (2_000, 2) } else { (20_000, 10) };
    let on: Vec<&Path<'_>> = measured.iter().map(|(p, _)| *p).collect();
    let free = closed_loops(&on, n, blocks);
    // The same again with every process on one CPU, which takes the scheduler's placement of
    // the three processes (and the cost of waking an idle CPU) out of the figures.
    let mut one_cpu: Vec<Option<hdrhistogram::Histogram<u64>>> = vec![None; on.len()];
    match procs::OneCpu::pin() {
        Ok(Some(pinned)) => {
            eprintln!("measuring round trips again, every process on one CPU");
            let hs = closed_loops(&on, n, blocks);
            drop(pinned);
            one_cpu = hs
                .into_iter()
                .zip(&on)
                .map(|(h, p)| {
                    h.map_err(|e| r.skipped.push(format!("{} on one CPU: {e:#}", p.name)))
                        .ok()
                })
                .collect();
        }
        Ok(None) => {}
        Err(e) => r.skipped.push(format!("round trips on one CPU: {e:#}")),
    }
    let mut direct_p50 = None;
    let mut direct_one_cpu_p50 = None;
    for (((p, mut res), h), one) in measured.into_iter().zip(free).zip(one_cpu) {
        match h {
            Ok(h) => {
                res.closed_loop_us = Percentiles::of(&h);
                let d = *direct_p50.get_or_insert(res.closed_loop_us.p50);
                res.added_p50_us = res.closed_loop_us.p50 - d;
                if let Some(one) = one {
                    let one = Percentiles::of(&one);
                    let d = *direct_one_cpu_p50.get_or_insert(one.p50);
                    res.one_cpu_added_p50_us = Some(one.p50 - d);
                    res.one_cpu_us = Some(one);
                }
                r.paths.push(res);
            }
            Err(e) if p.peer => r.skipped.push(format!("{}: {e:#}", p.name)),
            Err(e) => return Err(e),
        }
    }

    // New connection inside an open session → first echoed byte: back to back, then paced.
    let (setups, paced) = if o.quick { (200, 50) } else { (2_000, 500) };
    for p in paths
        .iter()
        .filter(|p| p.name == "direct TCP" || p.name.starts_with("sluice full path"))
    {
        let back_to_back = measure::setup(&*p.dial, setups)?;
        let gapped = measure::setup_paced(&*p.dial, paced, measure::SETUP_GAP)?;
        r.setup_us
            .push((p.name.clone(), Percentiles::of(&back_to_back)));
        r.setup_paced_us
            .push((p.name.clone(), Percentiles::of(&gapped)));
    }
    drop(connects);
    if !o.only.is_empty() {
        r.skipped
            .push("authorize rate, cancel latency, idle connections: --only".into());
        return Ok(r);
    }

    // Later stages report their own failure and leave the figures above intact.
    match report::authorize_rate(&dev, if o.quick { 1 } else { 5 }) {
        Ok(v) => r.authorize_per_s = v,
        Err(e) => r.skipped.push(format!("authorize rate: {e:#}")),
    }
    let (runs, conns) = if o.quick {
        (3, 5)
    } else {
        (report::CANCEL_SESSIONS, report::CANCEL_CONNECTIONS)
    };
    match report::cancel_latency(&dev, runs, conns) {
        Ok(v) => r.cancel = Some(v),
        Err(e) => r.skipped.push(format!("cancel latency: {e:#}")),
    }
    let idle = if o.quick {
        500
    } else {
        report::IDLE_CONNECTIONS
    };
    match report::idle(&dev, idle) {
        Ok(v) => r.idle = Some(v),
        Err(e) => r.skipped.push(format!("idle connections: {e:#}")),
    }
    Ok(r)
}

fn main() -> std::process::ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = procs::stop_children_on_signal() {
        eprintln!("Error: could not watch for SIGTERM: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let started = Instant::now();
    if let Some(secs) = o.authorize_only {
        let r = procs::sluice_bin(o.sluice.as_deref())
            .and_then(|bin| sluice::Dev::start(&bin, 9))
            .and_then(|dev| report::authorize_rate(&dev, secs));
        return match r {
            Ok(v) => {
                println!("durable authorize-session: {v:.0}/s (64 concurrent clients, {secs} s)");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(&o) {
        Ok(mut r) => {
            r.targets = targets::evaluate(&r);
            print!("{}", report::table(&r));
            print!("{}", targets::lines(&r.targets, r.quick));
            if let Err(e) = report::write(&r, &o.out) {
                eprintln!(
                    "Error: could not write results to {}: {e:#}",
                    o.out.display()
                );
                return std::process::ExitCode::FAILURE;
            }
            println!(
                "\nwrote {}/results.json and latency.svg in {:.0?}",
                o.out.display(),
                started.elapsed()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
