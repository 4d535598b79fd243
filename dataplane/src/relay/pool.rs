//! Per-thread pool of copy buffers for the legs that must pass bytes through user space (TLS).
//!
//! A buffer is taken only once a read has data for it and goes back as soon as the bytes are
//! written, so an idle connection holds none (10,000 idle TLS connections would otherwise pin
//! 1.25 GiB of 64 KiB buffers) and a busy thread reuses the same few warm buffers instead of
//! allocating per connection.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per buffer: one TLS record is at most 16 KiB, and 64 KiB reads measured best for
/// read/write forwarders here (PERF.md).
pub(crate) const BUFFER_SIZE: usize = 64 * 1024;
/// Buffers a thread keeps for reuse; more than this are freed when returned. Enough for a few
/// busy connections; 64 kept 8 MiB on a two-thread worker for good after a burst of tls load
/// (29.3 MB after against 20.0 MB with 8, 1,000 × 1 MB, docs/testing.md).
const KEEP_PER_THREAD: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer on loan from this thread's pool; dropping it gives it back.
pub(crate) struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    pub(crate) fn take() -> Self {
        let buf = FREE
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Self(Some(buf))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // During thread teardown the pool may already be gone; the buffer is then freed.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP_PER_THREAD {
                    f.push(buf);
                }
            });
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

/// How long a write may wait, with no byte taken, before the copy reads ahead of it.
const READ_AHEAD_AFTER: Duration = Duration::from_secs(1);
/// Most bytes read ahead of a stuck write. It is more than a socket's receive queue holds with
/// `tcp_buffer_bytes` set to 256 KiB (512 KiB of buffer, ~330 KB of data).
pub(crate) const READ_AHEAD_MAX: usize = 1 << 20;
/// A read goes into the last buffer's free room while it has at least this much.
const MIN_ROOM: usize = 16 * 1024;
/// Passes that moved bytes before the copy lets other tasks run.
const PASSES_PER_POLL: usize = 16;

/// Read-ahead bytes all relays of a process may hold at once, unless the worker's config says
/// otherwise: 64 stuck directions at [`READ_AHEAD_MAX`] each. Without a shared limit, a thousand
/// slow streams on a busy machine held 718 MB read ahead (docs/testing.md), and clients that
/// stop reading could make the worker hold a MiB per connection.
pub const DEFAULT_READ_AHEAD_BUDGET: usize = 64 << 20;

static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_READ_AHEAD_BUDGET);
static USED: AtomicUsize = AtomicUsize::new(0);

/// Sets the process's read-ahead budget (0 turns read-ahead off). Shares already held keep
/// what they hold.
pub(crate) fn set_read_ahead_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// Read-ahead bytes held by every relay of this process now.
#[cfg(test)]
pub(crate) fn read_ahead_in_use() -> usize {
    USED.load(Ordering::Relaxed)
}

/// Held by each test that reads ahead or changes the budget: the budget is process-wide and
/// tests run side by side.
#[cfg(test)]
pub(crate) static BUDGET_TEST_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One relay direction's share of the process's read-ahead budget; dropping it gives it back.
#[derive(Default)]
pub(crate) struct AheadShare {
    held: usize,
}

impl AheadShare {
    /// Holds at least `bytes` of the budget; false (and nothing taken) if the budget has no
    /// room for the difference.
    pub(crate) fn hold(&mut self, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(self.held).filter(|m| *m > 0) else {
            return true;
        };
        let budget = BUDGET.load(Ordering::Relaxed);
        let taken = USED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(more).filter(|u| *u <= budget)
        });
        if taken.is_err() {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    budget,
                    "the read-ahead budget is in use: more connections whose writes are stuck \
                     wait for it (raise [worker] read_ahead_budget_bytes if this is frequent)"
                );
            }
            return false;
        }
        self.held = bytes;
        true
    }

    /// Gives back all but `bytes` of what is held.
    pub(crate) fn keep(&mut self, bytes: usize) {
        if self.held > bytes {
            USED.fetch_sub(self.held - bytes, Ordering::Relaxed);
            self.held = bytes;
        }
    }
}

impl Drop for AheadShare {
    fn drop(&mut self) {
        self.keep(0);
    }
}

/// Times a write that takes nothing, for the relays' read-ahead: ready once the wait has lasted
/// [`READ_AHEAD_AFTER`]. The timer is made on the first wait and reset after, so a busy relay
/// does not allocate one per wait.
#[derive(Default)]
pub(crate) struct StuckWrite {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl StuckWrite {
    /// The write took bytes, or has none to take: any wait is over.
    pub(crate) fn moved(&mut self) {
        self.waiting = false;
    }

    /// The budget had no room for a read ahead: time the wait afresh, and ask again once it
    /// has lasted [`READ_AHEAD_AFTER`] more.
    pub(crate) fn restart(&mut self) {
        self.moved();
    }

    /// The write is waiting: starts timing if this wait is new; ready once it has lasted
    /// [`READ_AHEAD_AFTER`]. (A timer left running from an earlier wait may wake the task once
    /// for nothing.)
    pub(crate) fn poll_stuck(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if !self.waiting {
            let deadline = tokio::time::Instant::now() + READ_AHEAD_AFTER;
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        match self.timer.as_mut() {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Bytes read and not yet written: `buf[start..end]`.
struct Chunk {
    buf: PooledBuf,
    start: usize,
    end: usize,
}

/// Copies `r` to `w` until end of stream (then shuts `w` down), counting bytes as they move.
///
/// Normally one read is written (and flushed) before the next read, so a connection holds at
/// most one pooled buffer per direction. When a write has taken no byte for
/// [`READ_AHEAD_AFTER`], the copy goes on reading, up to [`READ_AHEAD_MAX`] and as far as the
/// process's read-ahead budget allows, until the write moves again. That breaks a deadlock with
/// the kernel: from Linux 6.17 a segment reaching past the receive window is discarded whole,
/// its acknowledgement too, while the receive queue is not empty, so a relay that stops reading
/// while its write waits can keep out the very acknowledgement that write is waiting for
/// (docs/testing.md). An emptied receive queue lets the peer's next retransmission, and its
/// acknowledgement, in.
pub(crate) async fn copy_pooled<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    count: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    let mut queued = 0usize;
    let mut eof = false;
    let mut flushed = true;
    let mut stuck = StuckWrite::default();
    let mut read_ahead = false;
    let mut share = AheadShare::default();
    let mut dir = crate::spin::Direction::default();
    std::future::poll_fn(|cx| {
        for _ in 0..PASSES_PER_POLL {
            let mut moved = false;
            // Read, into the last buffer's free room or a fresh one.
            let mut may_read = !eof && (queued == 0 || (read_ahead && queued < READ_AHEAD_MAX));
            let room = queue.back().map_or(0, |c| c.buf.len() - c.end);
            // A read ahead of a stuck write is held against the process's budget; without
            // room in it, the write waits as it would without read-ahead, and asks again later.
            if may_read
                && queued > 0
                && !share.hold(queued + if room >= MIN_ROOM { room } else { BUFFER_SIZE })
            {
                may_read = false;
                read_ahead = false;
                stuck.restart();
            }
            if may_read {
                if room < MIN_ROOM {
                    queue.push_back(Chunk {
                        buf: PooledBuf::take(),
                        start: 0,
                        end: 0,
                    });
                }
                if let Some(c) = queue.back_mut() {
                    let mut rb = ReadBuf::new(&mut c.buf[c.end..]);
                    let polled = Pin::new(&mut *r).poll_read(cx, &mut rb);
                    let n = rb.filled().len();
                    match polled {
                        Poll::Ready(Ok(())) if n == 0 => {
                            eof = true;
                            moved = true;
                        }
                        Poll::Ready(Ok(())) => {
                            c.end += n;
                            queued += n;
                            moved = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                    // An empty buffer goes straight back to the pool: an idle connection holds none.
                    if c.end == c.start {
                        queue.pop_back();
                    }
                }
                share.keep(queued);
            }
            // Write what is queued, as far as the writer takes it.
            while let Some(c) = queue.front_mut() {
                match Pin::new(&mut *w).poll_write(cx, &c.buf[c.start..c.end]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        c.start += n;
                        queued -= n;
                        count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        dir.moved(n);
                        flushed = false;
                        moved = true;
                        stuck.moved();
                        read_ahead = false;
                        if c.start == c.end {
                            queue.pop_front();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            share.keep(queued);
            if queue.is_empty() {
                stuck.moved();
                read_ahead = false;
                if !flushed {
                    match Pin::new(&mut *w).poll_flush(cx) {
                        Poll::Ready(Ok(())) => flushed = true,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                if eof && flushed {
                    return Pin::new(&mut *w).poll_shutdown(cx);
                }
            } else if !read_ahead && stuck.poll_stuck(cx).is_ready() {
                read_ahead = true;
                moved = true;
            }
            if !moved {
                return Poll::Pending;
            }
        }
        // Still moving: let the thread's other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pooled() -> usize {
        FREE.with(|f| f.borrow().len())
    }

    #[tokio::test]
    async fn an_idle_copy_holds_no_buffer_and_buffers_are_reused() {
        let (mut src_w, mut src_r) = tokio::io::duplex(1 << 20);
        let (mut dst_w, mut dst_r) = tokio::io::duplex(1 << 20);
        FREE.with(|f| f.borrow_mut().clear());
        let copy = tokio::spawn(async move {
            let count = AtomicU64::new(0);
            copy_pooled(&mut src_r, &mut dst_w, &count).await.unwrap();
            count.into_inner()
        });
        // The copy is parked on an empty pipe: the buffer it tried went back.
        tokio::task::yield_now().await;
        assert_eq!(pooled(), 1, "an idle copy holds no buffer");
        src_w.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        dst_r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        tokio::task::yield_now().await;
        assert_eq!(pooled(), 1, "the one buffer is back in the pool, not freed");
        drop(src_w);
        assert_eq!(copy.await.unwrap(), 5);
    }

    #[tokio::test]
    async fn copies_everything_and_shuts_down_the_writer() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut src_w, mut src_r) = tokio::io::duplex(4096);
        let (mut dst_w, mut dst_r) = tokio::io::duplex(4096);
        let count = AtomicU64::new(0);
        let feed = async {
            src_w.write_all(&data).await.unwrap();
            src_w.shutdown().await.unwrap();
        };
        let mut out = Vec::new();
        let (_, copied, read) = tokio::join!(
            feed,
            copy_pooled(&mut src_r, &mut dst_w, &count),
            dst_r.read_to_end(&mut out)
        );
        copied.unwrap();
        read.unwrap();
        assert_eq!(out, data);
        assert_eq!(count.into_inner(), data.len() as u64);
    }

    /// Writes `data` to `w` in 4 KiB pieces, counting what was taken.
    async fn feed(mut w: tokio::io::DuplexStream, data: Arc<Vec<u8>>, taken: Arc<AtomicU64>) {
        for piece in data.chunks(4096) {
            w.write_all(piece).await.unwrap();
            taken.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_write_is_read_ahead_of_up_to_the_limit_and_nothing_is_lost() {
        let _budget = BUDGET_TEST_LOCK.lock().await;
        const PIPE: usize = 64 * 1024;
        let data: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i % 253) as u8).collect());
        let (taken, mut dst_r, copy) = stuck_copy(data.clone(), PIPE);
        // Nobody reads the destination. Before the write has waited READ_AHEAD_AFTER, the copy
        // holds at most one buffer: the source took its pipe, the destination's and one read.
        tokio::time::sleep(READ_AHEAD_AFTER / 2).await;
        let before = taken.load(std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(
            before <= 2 * PIPE + BUFFER_SIZE,
            "{before} bytes taken before the write was stuck"
        );
        // Once it has waited, the copy reads on, up to READ_AHEAD_MAX and no further.
        tokio::time::sleep(READ_AHEAD_AFTER * 3).await;
        let after = taken.load(std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(
            after >= READ_AHEAD_MAX,
            "only {after} bytes taken from a source with a stuck write"
        );
        assert!(
            after <= 2 * PIPE + READ_AHEAD_MAX + BUFFER_SIZE,
            "{after} bytes taken: more than the read-ahead limit"
        );
        // Every byte arrives, in order, once the destination reads.
        let mut out = Vec::new();
        dst_r.read_to_end(&mut out).await.unwrap();
        copy.await.unwrap();
        assert_eq!(out.len(), data.len());
        assert!(out == *data, "the bytes changed on the way");
    }

    /// A copy from a fed source to a destination nobody reads yet: (bytes the source has had
    /// taken, the destination's reader, the copy).
    fn stuck_copy(
        data: Arc<Vec<u8>>,
        pipe: usize,
    ) -> (
        Arc<AtomicU64>,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
    ) {
        let (src_w, mut src_r) = tokio::io::duplex(pipe);
        let (mut dst_w, dst_r) = tokio::io::duplex(pipe);
        let taken = Arc::new(AtomicU64::new(0));
        tokio::spawn(feed(src_w, data, taken.clone()));
        let copy = tokio::spawn(async move {
            let count = AtomicU64::new(0);
            copy_pooled(&mut src_r, &mut dst_w, &count).await.unwrap();
        });
        (taken, dst_r, copy)
    }

    /// Restores the default budget when a test ends, even by panic.
    struct DefaultBudget;
    impl Drop for DefaultBudget {
        fn drop(&mut self) {
            set_read_ahead_budget(DEFAULT_READ_AHEAD_BUDGET);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_ahead_stops_at_the_budget_and_resumes_when_it_is_given_back() {
        let _budget = BUDGET_TEST_LOCK.lock().await;
        let _restore = DefaultBudget;
        const PIPE: usize = 64 * 1024;
        const BUDGET: usize = 256 * 1024;
        let no_read_ahead = 2 * PIPE + BUFFER_SIZE;
        set_read_ahead_budget(BUDGET);
        let data: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i % 241) as u8).collect());
        let got = |t: &Arc<AtomicU64>| t.load(std::sync::atomic::Ordering::Relaxed) as usize;

        // The first stuck copy reads ahead as far as the budget goes, less than its own limit.
        let (a_taken, mut a_dst, a_copy) = stuck_copy(data.clone(), PIPE);
        tokio::time::sleep(READ_AHEAD_AFTER * 3).await;
        let a = got(&a_taken);
        assert!(
            a >= BUDGET && a <= no_read_ahead + BUDGET,
            "the first copy took {a} bytes with a budget of {BUDGET}"
        );
        assert!(read_ahead_in_use() <= BUDGET);

        // A second one finds the budget in use: its write waits as it did without read-ahead.
        let (b_taken, mut b_dst, b_copy) = stuck_copy(data.clone(), PIPE);
        tokio::time::sleep(READ_AHEAD_AFTER * 3).await;
        let b = got(&b_taken);
        assert!(b <= no_read_ahead, "{b} bytes taken past a budget in use");

        // The first one's reader catches up and its copy ends: the budget goes back, and the
        // second copy reads ahead within the next READ_AHEAD_AFTER or two.
        let mut out = Vec::new();
        a_dst.read_to_end(&mut out).await.unwrap();
        a_copy.await.unwrap();
        assert!(out == *data, "the first copy's bytes changed on the way");
        tokio::time::sleep(READ_AHEAD_AFTER * 3).await;
        let b = got(&b_taken);
        assert!(
            b >= BUDGET,
            "the second copy took only {b} bytes after the budget was given back"
        );

        let mut out = Vec::new();
        b_dst.read_to_end(&mut out).await.unwrap();
        b_copy.await.unwrap();
        assert!(out == *data, "the second copy's bytes changed on the way");
        assert_eq!(read_ahead_in_use(), 0, "finished copies hold no budget");
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_of_zero_turns_read_ahead_off() {
        let _budget = BUDGET_TEST_LOCK.lock().await;
        let _restore = DefaultBudget;
        const PIPE: usize = 64 * 1024;
        set_read_ahead_budget(0);
        let data: Arc<Vec<u8>> = Arc::new((0..1_000_000u32).map(|i| (i % 233) as u8).collect());
        let (taken, mut dst, copy) = stuck_copy(data.clone(), PIPE);
        tokio::time::sleep(READ_AHEAD_AFTER * 5).await;
        let t = taken.load(std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(
            t <= 2 * PIPE + BUFFER_SIZE,
            "{t} bytes read ahead with no budget"
        );
        let mut out = Vec::new();
        dst.read_to_end(&mut out).await.unwrap();
        copy.await.unwrap();
        assert!(out == *data, "the bytes changed on the way");
    }
}
