//! Which writes to one QUIC connection go first when its shared send credit runs out.
//!
//! Every stream of a connection draws on two shared budgets: the peer's connection-level
//! flow-control window and our own send window. Bulk streams keep both full, and quinn wakes
//! the writers blocked on them in no useful order (last blocked, first woken), each taking as
//! much as it can. A new connection's header or a keystroke then competes with every bulk
//! writer for each bit of credit that frees up: in the load test's 1,000-stream round, 423
//! streams waited a mean of 16.6 s before their first bytes went out (docs/design.md).
//!
//! The gate gives small writes the first claim. A small write that quinn cannot take at once
//! registers here while it waits; bulk writes hold back while one does, so the credit that
//! frees up next goes to it. A small write can also wait on its own stream's window, which no
//! bulk writer can free, so its claim lapses after [`PRIORITY_FOR`].

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quinn::{SendStream, WriteError, Written};
use tokio::time::{Instant, Sleep};

/// Writes of at most this many bytes go first: stream headers, answers, keystrokes,
/// queries. A relay's first read is this size, so a new connection's first bytes count too.
pub const SMALL_WRITE: usize = 16 * 1024;

/// How long a waiting small write holds bulk writes back.
pub const PRIORITY_FOR: Duration = Duration::from_millis(100);

/// One per QUIC connection, shared by all its streams' writers.
#[derive(Debug, Default)]
pub struct SendGate {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Small writes quinn has not taken yet, and since when each waits.
    small: Vec<(u64, Instant)>,
    /// Bulk writers holding back for them.
    held: Vec<Waker>,
}

impl SendGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `chunks` (as [`SendStream::write_chunks`] does), first if `small`: the caller
    /// says so for at most [`SMALL_WRITE`] bytes that did not come from a larger read (the
    /// tail of a bulk read is still bulk). Cancel-safe like `write_chunks`: dropped before it
    /// is ready, it has written nothing.
    pub async fn write_chunks(
        &self,
        send: &mut SendStream,
        chunks: &mut [Bytes],
        small: bool,
    ) -> Result<Written, WriteError> {
        if small {
            self.write_small(send.write_chunks(chunks)).await
        } else {
            self.write_bulk(send.write_chunks(chunks)).await
        }
    }

    /// Writes all of `data` (a frame), as a small write if it is small.
    pub async fn write_all(&self, send: &mut SendStream, data: &[u8]) -> Result<(), WriteError> {
        let small = data.len() <= SMALL_WRITE;
        let mut chunks = [Bytes::copy_from_slice(data)];
        while !chunks[0].is_empty() {
            self.write_chunks(send, &mut chunks, small).await?;
        }
        Ok(())
    }

    async fn write_small<T>(&self, write: impl Future<Output = T>) -> T {
        let mut write = pin!(write);
        let mut waiting: Option<Waiting<'_>> = None;
        std::future::poll_fn(|cx| {
            let polled = write.as_mut().poll(cx);
            if polled.is_pending() && waiting.is_none() {
                waiting = Some(self.enter());
            }
            polled
        })
        .await
        // `waiting` drops here and lets held bulk writers go.
    }

    async fn write_bulk<T>(&self, write: impl Future<Output = T>) -> T {
        let mut write = pin!(write);
        // A timer only while held: the usual bulk write never needs one.
        let mut lapse: Option<Pin<Box<Sleep>>> = None;
        std::future::poll_fn(|cx| loop {
            let Some(until) = self.hold(cx) else {
                return write.as_mut().poll(cx);
            };
            let sleep = lapse.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if sleep.deadline() != until {
                sleep.as_mut().reset(until);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The claim lapsed meanwhile: look again.
        })
        .await
    }

    fn enter(&self) -> Waiting<'_> {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.small.push((id, Instant::now()));
        Waiting { gate: self, id }
    }

    /// When a small write still has a claim, registers `cx` to be woken when it is taken and
    /// returns when the claim lapses.
    fn hold(&self, cx: &mut Context<'_>) -> Option<Instant> {
        let mut s = self.lock();
        // Every bulk write of every relay passes here: no clock read when nothing waits.
        if s.small.is_empty() {
            return None;
        }
        let now = Instant::now();
        let until = s
            .small
            .iter()
            .map(|&(_, since)| since + PRIORITY_FOR)
            .filter(|&until| until > now)
            .max()?;
        if !s.held.iter().any(|w| w.will_wake(cx.waker())) {
            s.held.push(cx.waker().clone());
        }
        Some(until)
    }
}

#[cfg(test)]
impl SendGate {
    /// Small writes waiting for credit now.
    pub(crate) fn small_waiting(&self) -> usize {
        self.lock().small.len()
    }
}

/// A small write waiting for credit; dropped when quinn takes it (or the write is dropped).
struct Waiting<'a> {
    gate: &'a SendGate,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let held = {
            let mut s = self.gate.lock();
            s.small.retain(|&(id, _)| id != self.id);
            let now = Instant::now();
            if s.small
                .iter()
                .all(|&(_, since)| since + PRIORITY_FOR <= now)
            {
                std::mem::take(&mut s.held)
            } else {
                Vec::new()
            }
        };
        for w in held {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A QUIC connection on loopback whose receiving end (the worker's side) allows
    /// `window` bytes in flight on the whole connection and reads each stream slowly, so
    /// bulk writers keep the connection's credit used up. Returns both endpoints, the client's
    /// connection, the bulk bytes the worker's side has read, and (once a stream starting with
    /// "probe" arrived) how many had been read then.
    async fn tight_pair(
        window: u32,
    ) -> (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        Arc<AtomicU64>,
        Arc<AtomicU64>,
    ) {
        let mut tight = crate::quic::transport_config(false);
        tight
            .receive_window(window.into())
            .stream_receive_window((window / 4).into());
        let (server, client, s, c) =
            crate::quic::loopback_pair(tight, crate::quic::transport_config(true)).await;
        let bulk = Arc::new(AtomicU64::new(0));
        let probe_at = Arc::new(AtomicU64::new(u64::MAX));
        let (received, probed) = (bulk.clone(), probe_at.clone());
        // The worker's side: bulk streams are read a packet at a time with a pause between
        // reads; a stream that starts with "probe" records how many bulk bytes had arrived.
        tokio::spawn(async move {
            while let Ok((send, mut recv)) = s.accept_bi().await {
                let (received, probed) = (received.clone(), probed.clone());
                tokio::spawn(async move {
                    let _send = send;
                    let mut first = true;
                    while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                        if first && c.bytes.starts_with(b"stuck") {
                            // Never read again: the stream's window stays full.
                            std::future::pending::<()>().await;
                        }
                        if first && c.bytes.starts_with(b"probe") {
                            probed.store(received.load(Ordering::Relaxed), Ordering::Relaxed);
                            return;
                        }
                        first = false;
                        received.fetch_add(c.bytes.len() as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
        });
        (server, client, c, bulk, probe_at)
    }

    /// `n` streams that write 64 KiB blocks through `gate` as bulk, for as long as they run.
    async fn bulk_writers(
        conn: &quinn::Connection,
        gate: &Arc<SendGate>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut writers = Vec::new();
        for _ in 0..n {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let gate = gate.clone();
            writers.push(tokio::spawn(async move {
                let _recv = recv;
                let block = Bytes::from(vec![7u8; 64 * 1024]);
                loop {
                    let mut chunks = [block.clone()];
                    while !chunks[0].is_empty() {
                        if gate
                            .write_chunks(&mut send, &mut chunks, false)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }));
        }
        writers
    }

    /// 64 bulk streams keep a connection's 256 KiB of credit used up. A new stream's header,
    /// written through the gate, reaches the other end before the bulk streams deliver
    /// another two windows' worth; quinn alone let such a header wait for many windows.
    #[tokio::test]
    async fn a_small_write_goes_ahead_of_bulk_streams_that_keep_the_credit_used_up() {
        const WINDOW: u32 = 256 * 1024;
        let (_server, _client, conn, bulk, probe_at) = tight_pair(WINDOW).await;
        let gate = Arc::new(SendGate::default());
        let writers = bulk_writers(&conn, &gate, 64).await;
        // Let the bulk streams use up the credit.
        let start = std::time::Instant::now();
        while bulk.load(Ordering::Relaxed) < 4 * u64::from(WINDOW) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "bulk did not flow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = bulk.load(Ordering::Relaxed);
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), gate.write_all(&mut send, b"probe"))
            .await
            .expect("the probe's write waited 30 s")
            .unwrap();
        let arrived = loop {
            let at = probe_at.load(Ordering::Relaxed);
            if at != u64::MAX {
                break at;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the probe never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let behind = arrived.saturating_sub(before);
        assert!(
            behind <= 2 * u64::from(WINDOW),
            "the probe arrived after {behind} more bulk bytes"
        );
        for w in writers {
            w.abort();
        }
    }

    /// A small write can wait on its own stream's window, which no bulk writer frees: its
    /// claim lapses, and bulk streams flow on while it still waits.
    #[tokio::test]
    async fn a_small_write_stuck_on_its_own_stream_holds_bulk_back_only_briefly() {
        const WINDOW: u32 = 256 * 1024;
        let (_server, _client, conn, bulk, _) = tight_pair(WINDOW).await;
        let gate = Arc::new(SendGate::default());
        // Small writes on a stream the other end stops reading, until one waits for good on
        // the stream's window.
        let (mut stuck, _stuck_recv) = conn.open_bi().await.unwrap();
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut piece = vec![0u8; SMALL_WRITE];
                piece[..5].copy_from_slice(b"stuck");
                loop {
                    gate.write_all(&mut stuck, &piece).await.unwrap();
                }
            })
        };
        let start = std::time::Instant::now();
        while gate.small_waiting() == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no small write waited"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let writers = bulk_writers(&conn, &gate, 4).await;
        while bulk.load(Ordering::Relaxed) < 4 * u64::from(WINDOW) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "bulk streams stayed held back behind the stuck small write"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The small write still waits.
        assert_eq!(gate.small_waiting(), 1);
        waiting.abort();
        for w in writers {
            w.abort();
        }
    }
}
