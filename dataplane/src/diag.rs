//! What this process's QUIC connections and relays are doing right now, for an operator who
//! sends `sluice connect` or `sluice worker` SIGUSR1: a connection that has stopped moving
//! shows which side holds its bytes (the socket, the relay, or quinn) and for how long.
//!
//! Relays and connections register themselves while they live; the report reads the relays'
//! own [`Counts`], so the byte path does nothing for it beyond stamping when it last moved.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use crate::relay::Counts;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static NEXT: AtomicU64 = AtomicU64::new(1);
static RELAYS: LazyLock<Mutex<HashMap<u64, Relay>>> = LazyLock::new(Default::default);
static CONNS: LazyLock<Mutex<HashMap<u64, quinn::Connection>>> = LazyLock::new(Default::default);

/// Milliseconds since the first call in this process: when a relay last moved bytes.
pub(crate) fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// A live relay: its connection's `stable_id`, its stream's index, and its counts.
struct Relay {
    conn: usize,
    stream: u64,
    counts: Arc<Counts>,
}

/// A relay's registration; dropping it takes the relay out of the report.
pub(crate) struct RelayProbe(u64);

impl RelayProbe {
    pub(crate) fn new(conn: usize, stream: quinn::StreamId, counts: &Arc<Counts>) -> Self {
        let now = now_ms();
        counts.up_moved_ms.store(now, Ordering::Relaxed);
        counts.down_moved_ms.store(now, Ordering::Relaxed);
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        let relay = Relay {
            conn,
            stream: stream.index(),
            counts: counts.clone(),
        };
        lock(&RELAYS).insert(key, relay);
        Self(key)
    }
}

impl Drop for RelayProbe {
    fn drop(&mut self) {
        lock(&RELAYS).remove(&self.0);
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

/// One line per live QUIC connection (quinn's counters: round trip, path MTU, congestion window,
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
            "quic connection {id} with {}: rtt {:?} mtu {} cwnd {} sent {} packets, lost {} ({} bytes), {} congestion events; frames sent: {}; frames received: {}",
            c.remote_address(),
            s.path.rtt,
            s.path.current_mtu,
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
    let relays: Vec<(usize, u64, Arc<Counts>)> = lock(&RELAYS)
        .values()
        .map(|r| (r.conn, r.stream, r.counts.clone()))
        .collect();
    let total = relays.len();
    let mut stalled: Vec<(u64, String)> = relays
        .iter()
        .filter_map(|(conn, stream, c)| {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let flag = |f: &AtomicBool| f.load(Ordering::Relaxed);
            let (up_idle, down_idle) = (
                now.saturating_sub(load(&c.up_moved_ms)),
                now.saturating_sub(load(&c.down_moved_ms)),
            );
            let longest = up_idle.min(down_idle);
            if longest < 1000 {
                return None;
            }
            let (read, taken) = (load(&c.read_from_tcp), load(&c.tcp_to_quic));
            let (got, written) = (load(&c.got_from_quic), load(&c.quic_to_tcp));
            let mut l = String::new();
            let _ = write!(
                l,
                "relay on connection {conn} stream {stream}: socket to quinn: read {read}{}, taken by quinn {taken}{} (last {:.1} s ago); quinn to socket: got {got}, written {written}{} (last {:.1} s ago)",
                if flag(&c.tcp_ended) { " (ended)" } else { "" },
                match (flag(&c.quic_finished), read > taken, flag(&c.reading_ahead)) {
                    (true, _, _) => " (finished)",
                    (_, true, true) => " (waits for quinn, reading ahead)",
                    (_, true, false) => " (waits for quinn)",
                    _ => "",
                },
                up_idle as f64 / 1000.0,
                match (flag(&c.tcp_shut_down), got > written) {
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
