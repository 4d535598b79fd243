//! Starting the processes under test and reading their cost from /proc.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; /proc reports in these ticks.
    100.0
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The processes running now.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// How many processes other than this one run a program whose name starts with `sluice`.
pub fn other_sluice_processes() -> usize {
    let me = std::process::id();
    pids()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            std::str::from_utf8(arg0)
                .ok()
                .and_then(|a| Path::new(a).file_name()?.to_str())
                .is_some_and(|name| name.starts_with("sluice"))
        })
        .count()
}

/// `roots` and every process descended from them, living now, with each one's fields from
/// `/proc/PID/stat` (after the command name).
fn tree(roots: &[u32]) -> Vec<(u32, Vec<String>)> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut fields: HashMap<u32, Vec<String>> = HashMap::new();
    for pid in pids() {
        let Some(f) = stat_fields(pid) else { continue };
        // Fields after the name: state(0) ppid(1) …
        parent.insert(pid, f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0));
        fields.insert(pid, f);
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if roots.contains(&pid) {
                return true;
            }
            match parent.get(&pid) {
                Some(&p) if p != 0 && p != pid => pid = p,
                _ => return false,
            }
        }
        false
    };
    fields
        .into_iter()
        .filter(|(pid, _)| in_tree(*pid))
        .collect()
}

/// CPU seconds used by `roots` and all their descendants, living and reaped.
pub fn tree_cpu(roots: &[u32]) -> f64 {
    tree(roots)
        .iter()
        .map(|(_, f)| {
            // utime(11) stime(12) cutime(13) cstime(14).
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            num(11) + num(12) + num(13) + num(14)
        })
        .sum::<f64>()
        / ticks_per_second()
}

/// While it lives, every thread of this harness and of the processes it started (`sluice dev`,
/// `connect`, the target, the peers) may run on one CPU only, the first this harness was
/// allowed; threads started meanwhile inherit that. Dropping it gives every thread back the
/// CPUs the harness had at the start.
///
/// Round trips measured so show what each proxy itself adds: on the 2-vCPU VMs these runs use,
/// waking a process on the other, idle vCPU costs about 25 µs, and whether a path pays that
/// once per round trip depends on where the scheduler puts three processes, which changes
/// from run to run (benches/RESULTS.md, 2026-12-02).
pub struct OneCpu {
    all: nix::sched::CpuSet,
}

impl OneCpu {
    /// `None` when this harness may run on one CPU only anyway.
    pub fn pin() -> anyhow::Result<Option<Self>> {
        use nix::sched::{sched_getaffinity, CpuSet};
        let all = sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
        let mut allowed = (0..CpuSet::count()).filter(|&c| all.is_set(c).unwrap_or(false));
        let (Some(first), Some(_)) = (allowed.next(), allowed.next()) else {
            return Ok(None);
        };
        let mut one = CpuSet::new();
        one.set(first)?;
        let pinned = Self { all };
        // Twice: a thread started while the first pass ran may have inherited the old mask.
        for _ in 0..2 {
            set_tree_affinity(&one)?;
        }
        Ok(Some(pinned))
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        for _ in 0..2 {
            if let Err(e) = set_tree_affinity(&self.all) {
                eprintln!("sluice-bench: could not give threads back all CPUs: {e:#}");
            }
        }
    }
}

/// Sets the CPU affinity of every thread of this process and its descendants. A thread that
/// ends meanwhile is skipped.
fn set_tree_affinity(set: &nix::sched::CpuSet) -> anyhow::Result<()> {
    for (pid, _) in tree(&[std::process::id()]) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for tid in tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("setting thread {tid}'s CPU affinity"))
                }
            }
        }
    }
    Ok(())
}

/// Resident memory (bytes) and thread count of one process.
pub fn rss_and_threads(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// Children alive now, so that a SIGTERM or SIGHUP to the harness can stop them
/// ([`stop_children_on_signal`]); a panic or an error stops them through `Drop`.
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends SIGTERM to `pid` (a child of this process).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// On SIGTERM or SIGHUP, stops every child still running and exits with 128 + the signal.
/// Without it, `kill <harness>` left `sluice dev`, `connect` and the targets running (Ctrl-C
/// reaches the whole process group and did not).
pub fn stop_children_on_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut hup) = rt.block_on(async {
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::spawn(move || {
        let code = rt.block_on(async {
            tokio::select! {
                _ = term.recv() => 128 + 15,
                _ = hup.recv() => 128 + 1,
            }
        });
        let pids = live().clone();
        eprintln!("sluice-bench: stopping {} child processes", pids.len());
        pids.into_iter().for_each(terminate);
        std::process::exit(code);
    });
    Ok(())
}

/// A child that is killed when dropped, with its stdout lines on a channel.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("while starting {cmd:?}"))?;
        live().push(child.id());
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                // Keep the tail only: a long run must not grow this without bound.
                if s.len() > 64 * 1024 {
                    s.clear();
                }
                s.push_str(&l);
                s.push('\n');
            }
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line satisfies `f`, returning its value.
    pub fn wait_line<T>(
        &mut self,
        limit: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + limit;
        for l in &self.seen {
            if let Some(v) = f(l) {
                return Ok(v);
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let v = f(&l);
                    self.seen.push(l);
                    if let Some(v) = v {
                        return Ok(v);
                    }
                }
                Err(e) => {
                    let what = match e {
                        mpsc::RecvTimeoutError::Timeout => "timed out",
                        mpsc::RecvTimeoutError::Disconnected => "the process exited",
                    };
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "{what}; output so far:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        self.stderr.lock().unwrap_or_else(|p| p.into_inner())
                    )
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        live().retain(|p| *p != pid);
        terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sluice` binary next to this one (both are built by `cargo build --release`).
pub fn sluice_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("sluice");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p sluice-cli) or pass --sluice PATH",
            p.display()
        );
    }
    Ok(p)
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 for peers that cannot bind port 0 and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts TCP on `port`.
pub fn wait_listening(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listened on port {port} within {limit:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;

    fn cpus(pid: i32) -> CpuSet {
        sched_getaffinity(Pid::from_raw(pid)).unwrap()
    }

    fn count(set: &CpuSet) -> usize {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .count()
    }

    /// The harness, a child it started, and a thread started while pinned all run on one CPU;
    /// afterwards each has all the CPUs back.
    #[test]
    fn one_cpu_pins_the_harness_and_its_children_then_gives_the_cpus_back() {
        let before = cpus(0);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let child_pid = child.id() as i32;
        let pinned = OneCpu::pin().unwrap();
        if count(&before) < 2 {
            assert!(pinned.is_none(), "one CPU allowed: nothing to pin");
        } else {
            assert!(pinned.is_some());
            assert_eq!(count(&cpus(child_pid)), 1, "the child is on one CPU");
            assert_eq!(count(&cpus(0)), 1, "this thread is on one CPU");
            let started = std::thread::spawn(|| cpus(0)).join().unwrap();
            assert_eq!(count(&started), 1, "a thread started meanwhile inherits it");
            drop(pinned);
            assert_eq!(cpus(child_pid), before, "the child has its CPUs back");
            assert_eq!(cpus(0), before, "this thread has its CPUs back");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
