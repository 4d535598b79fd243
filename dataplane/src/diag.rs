//! What this process's QUIC connections and relays are doing right now, for an operator who
//! sends `sluice connect` or `sluice worker` SIGUSR1: a connection that has stopped moving
//! shows which side holds its bytes (the socket, the relay, or quinn) and for how long.
//!
//! Relays and connections register themselves while they live; the byte path only updates
//! a few relaxed atomics of its own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static NEXT: AtomicU64 = AtomicU64::new(1);
static RELAYS: LazyLock<Mutex<HashMap<u64, Arc<Probe>>>> = LazyLock::new(Default::default);
static CONNS: LazyLock<Mutex<HashMap<u64, quinn::Connection>>> = LazyLock::new(Default::default);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Bits of [`Probe::state`].
pub(crate) mod state {
    /// Bytes read from the socket wait for quinn to take them.
    pub const UP_WAITS_QUIC: u64 = 1;
    /// Reading ahead of a write quinn has not taken for a while.
    pub const UP_READ_AHEAD: u64 = 2;
    /// The socket's reader sent its end.
    pub const UP_EOF: u64 = 4;
    /// Everything up was handed to quinn and the stream finished.
    pub const UP_DONE: u64 = 8;
    /// Chunks from quinn wait for the socket to take them.
    pub const DOWN_WAITS_SOCKET: u64 = 16;
    /// The stream ended and the socket was shut down.
    pub const DOWN_DONE: u64 = 32;
}

/// One relay's progress, updated by the relay as it moves bytes.
#[derive(Default)]
pub(crate) struct Probe {
    conn: AtomicU64,
    stream: AtomicU64,
    up_read: AtomicU64,
    up_taken: AtomicU64,
    down_got: AtomicU64,
    down_written: AtomicU64,
    state: AtomicU64,
    up_moved_ms: AtomicU64,
    down_moved_ms: AtomicU64,
}

impl Probe {
    pub(crate) fn up_read(&self, n: usize) {
        self.up_read.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn up_taken(&self, n: usize) {
        self.up_taken.fetch_add(n as u64, Ordering::Relaxed);
        self.up_moved_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn down_got(&self, n: usize) {
        self.down_got.fetch_add(n as u64, Ordering::Relaxed);
        self.down_moved_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn down_written(&self, n: usize) {
        self.down_written.fetch_add(n as u64, Ordering::Relaxed);
        self.down_moved_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn set(&self, bit: u64, on: bool) {
        if on {
            self.state.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.state.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// A relay's registration; dropping it takes the relay out of the report.
pub(crate) struct RelayProbe {
    key: u64,
    pub(crate) probe: Arc<Probe>,
}

impl RelayProbe {
    pub(crate) fn new(conn: usize, stream: quinn::StreamId) -> Self {
        let probe = Arc::new(Probe::default());
        probe.conn.store(conn as u64, Ordering::Relaxed);
        probe.stream.store(stream.index(), Ordering::Relaxed);
        let now = now_ms();
        probe.up_moved_ms.store(now, Ordering::Relaxed);
        probe.down_moved_ms.store(now, Ordering::Relaxed);
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&RELAYS).insert(key, probe.clone());
        Self { key, probe }
    }
}

impl Drop for RelayProbe {
    fn drop(&mut self) {
        lock(&RELAYS).remove(&self.key);
    }
}

/// A QUIC connection's registration; dropping it takes the connection out of the report.
pub(crate) struct ConnProbe(usize);

impl ConnProbe {
    pub(crate) fn new(conn: &quinn::Connection) -> Self {
        lock(&CONNS).insert(conn.stable_id() as u64, conn.clone());
        Self(conn.stable_id())
    }
}

impl Drop for ConnProbe {
    fn drop(&mut self) {
        lock(&CONNS).remove(&(self.0 as u64));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many relays [`report`] lists at most, the longest stalled first.
const REPORT_RELAYS: usize = 50;

/// One line per live QUIC connection (quinn's counters: round trip, congestion window,
/// losses, and the flow-control frames each side sent), then one per live relay that has not
/// moved for a second, the longest stalled first.
pub fn report() -> Vec<String> {
    let mut lines = Vec::new();
    let conns: Vec<(u64, quinn::Connection)> =
        lock(&CONNS).iter().map(|(k, c)| (*k, c.clone())).collect();
    for (id, c) in conns {
        let s = c.stats();
        let f = |fr: &quinn::FrameStats| {
            format!(
                "data_blocked {} stream_data_blocked {} max_data {} max_stream_data {} stream {} acks {}",
                fr.data_blocked, fr.stream_data_blocked, fr.max_data, fr.max_stream_data, fr.stream, fr.acks
            )
        };
        lines.push(format!(
            "quic connection {id} with {}: rtt {:?} cwnd {} sent {} packets, lost {} ({} bytes), {} congestion events; frames sent: {}; frames received: {}",
            c.remote_address(),
            s.path.rtt,
            s.path.cwnd,
            s.path.sent_packets,
            s.path.lost_packets,
            s.path.lost_bytes,
            s.path.congestion_events,
            f(&s.frame_tx),
            f(&s.frame_rx),
        ));
    }
    let now = now_ms();
    let probes: Vec<Arc<Probe>> = lock(&RELAYS).values().cloned().collect();
    let total = probes.len();
    let mut stalled: Vec<(u64, String)> = probes
        .iter()
        .filter_map(|p| {
            let st = p.state.load(Ordering::Relaxed);
            let idle = |ms: &AtomicU64| now.saturating_sub(ms.load(Ordering::Relaxed));
            let (up_idle, down_idle) = (idle(&p.up_moved_ms), idle(&p.down_moved_ms));
            let longest = up_idle.min(down_idle);
            if longest < 1000 {
                return None;
            }
            let mut l = String::new();
            let _ = write!(
                l,
                "relay on connection {} stream {}: socket to quinn: read {}{}, taken by quinn {}{} (last {:.1} s ago); quinn to socket: got {}, written {}{} (last {:.1} s ago)",
                p.conn.load(Ordering::Relaxed),
                p.stream.load(Ordering::Relaxed),
                p.up_read.load(Ordering::Relaxed),
                if st & state::UP_EOF != 0 { " (ended)" } else { "" },
                p.up_taken.load(Ordering::Relaxed),
                match (st & state::UP_DONE != 0, st & state::UP_WAITS_QUIC != 0, st & state::UP_READ_AHEAD != 0) {
                    (true, _, _) => " (finished)",
                    (_, true, true) => " (waits for quinn, reading ahead)",
                    (_, true, false) => " (waits for quinn)",
                    _ => "",
                },
                up_idle as f64 / 1000.0,
                p.down_got.load(Ordering::Relaxed),
                p.down_written.load(Ordering::Relaxed),
                match (st & state::DOWN_DONE != 0, st & state::DOWN_WAITS_SOCKET != 0) {
                    (true, _) => " (finished)",
                    (_, true) => " (waits for the socket)",
                    _ => "",
                },
                down_idle as f64 / 1000.0,
            );
            Some((longest, l))
        })
        .collect();
    stalled.sort_by_key(|s| std::cmp::Reverse(s.0));
    lines.push(format!(
        "{total} relays live, {} not moved for over a second{}",
        stalled.len(),
        if stalled.len() > REPORT_RELAYS {
            format!(" (the {REPORT_RELAYS} longest stalled follow)")
        } else {
            String::new()
        }
    ));
    lines.extend(stalled.into_iter().take(REPORT_RELAYS).map(|(_, l)| l));
    lines
}
