//! The worker's I/O drivers (`-io-driver epoll|uring`).
//!
//! `epoll` (the default) runs each worker thread on a Tokio current-thread runtime, whose
//! driver is epoll readiness; plaintext TCP ↔ TCP relays use `splice(2)` driven by it.
//! `uring` runs each worker thread on tokio-uring: the same Tokio runtime (so quinn, rustls
//! and the target dials are unchanged) plus an io_uring instance, and plaintext TCP ↔ TCP
//! relays read and write through io_uring with owned buffers. QUIC and TLS legs stay on
//! readiness in both: quinn and rustls drive their sockets that way.
//!
//! Where io_uring cannot be used (an old kernel, `kernel.io_uring_disabled`, a seccomp
//! filter), `uring` falls back to `epoll` and says so in the log.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// How a worker thread waits for I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoDriver {
    /// Readiness (epoll) through Tokio; plaintext relays splice.
    #[default]
    Epoll,
    /// io_uring through tokio-uring for plaintext relays; readiness for the rest.
    Uring,
}

impl std::str::FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(Self::Epoll),
            "uring" | "io_uring" => Ok(Self::Uring),
            other => Err(format!(
                "unknown I/O driver {other:?}: use \"epoll\" or \"uring\""
            )),
        }
    }
}

impl std::fmt::Display for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Epoll => "epoll",
            Self::Uring => "uring",
        })
    }
}

/// Submission queue entries per thread. Only submissions in one batch need a slot; reads
/// waiting on idle connections do not hold one.
const ENTRIES: u32 = 256;

/// A plaintext relay for the thread's io_uring: the two sockets, the byte counters, and where
/// its result goes. Dropping the receiver of `done` (the connection's task ended, as on a
/// cancel) drops the relay.
struct Job {
    a: tokio::net::TcpStream,
    b: tokio::net::TcpStream,
    a_to_b: Arc<AtomicU64>,
    b_to_a: Arc<AtomicU64>,
    done: oneshot::Sender<io::Result<()>>,
}

thread_local! {
    /// Set on uring threads: where this thread's relays are handed to be run as local tasks
    /// (io_uring sockets belong to their thread, and a connection's task must stay `Send`).
    static JOBS: RefCell<Option<mpsc::UnboundedSender<Job>>> = const { RefCell::new(None) };
}

/// Whether the calling thread runs the uring driver.
pub(crate) fn on_this_thread() -> bool {
    JOBS.with(|j| j.borrow().is_some())
}

/// Runs each relay handed over on this thread as a local task.
async fn run_jobs(mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        tokio::task::spawn_local(async move {
            let Job {
                a,
                b,
                a_to_b,
                b_to_a,
                mut done,
            } = job;
            tokio::select! {
                r = relay(a, b, &a_to_b, &b_to_a) => {
                    let _ = done.send(r);
                }
                () = done.closed() => {}
            }
        });
    }
}

/// Relays between `a` and `b` on this thread's io_uring (see [`relay`]); the future is `Send`.
/// Must be called on a uring thread ([`on_this_thread`]).
pub(crate) async fn relay_here(
    a: tokio::net::TcpStream,
    b: tokio::net::TcpStream,
    a_to_b: Arc<AtomicU64>,
    b_to_a: Arc<AtomicU64>,
) -> io::Result<()> {
    let (done, result) = oneshot::channel();
    let job = Job {
        a,
        b,
        a_to_b,
        b_to_a,
        done,
    };
    let sent = JOBS.with(|j| j.borrow().as_ref().map(|tx| tx.send(job).is_ok()));
    if sent != Some(true) {
        return Err(io::Error::other("this thread runs no io_uring relays"));
    }
    result
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring relay task ended")))
}

/// The driver a worker will really use: `uring` only where an io_uring instance can be made.
pub(crate) fn effective(wanted: IoDriver) -> IoDriver {
    if wanted == IoDriver::Epoll {
        return IoDriver::Epoll;
    }
    // On a thread of its own: the probe's runtime cannot be dropped inside the caller's.
    let probe = std::thread::spawn(|| tokio_uring::Runtime::new(&builder()).map(drop))
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")));
    match probe {
        Ok(()) => IoDriver::Uring,
        Err(e) => {
            warn!(error = %e, "io_uring is not available here; the worker uses the epoll driver");
            IoDriver::Epoll
        }
    }
}

fn builder() -> tokio_uring::Builder {
    let mut b = tokio_uring::builder();
    b.entries(ENTRIES);
    b
}

/// Runs `fut` to completion on this thread with `driver`; with epoll, polling for `busy_poll`
/// after each small transfer (crate::spin). Returns `None` if the thread's runtime could not start
/// (logged).
pub(crate) fn block_on<F: std::future::Future>(
    driver: IoDriver,
    busy_poll: std::time::Duration,
    fut: F,
) -> Option<F::Output> {
    if driver == IoDriver::Uring {
        match tokio_uring::Runtime::new(&builder()) {
            Ok(rt) => {
                let (tx, rx) = mpsc::unbounded_channel();
                JOBS.with(|j| *j.borrow_mut() = Some(tx));
                // No busy polling here: tokio-uring submits its queued operations when the
                // thread parks, and a polling thread does not park, so each operation would
                // wait (the io_uring row's added p50 went from ~45 to ~90–117 µs with it).
                let out = rt.block_on(async {
                    tokio::task::spawn_local(run_jobs(rx));
                    fut.await
                });
                JOBS.with(|j| *j.borrow_mut() = None);
                return Some(out);
            }
            Err(e) => warn!(error = %e, "io_uring runtime failed on this thread; using epoll"),
        }
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt.block_on(crate::spin::with_polling(busy_poll, fut))),
        Err(e) => {
            warn!(error = %e, "worker thread could not start its runtime");
            None
        }
    }
}

/// Reads start this small, so an idle connection holds little (a read waits on each side with
/// its buffer), double while they come back full, up to [`MAX_READ`], and start small again
/// after a read that filled less than an eighth.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Shuts both sockets down when the relay ends or is dropped (a cancel). io_uring reads and
/// writes still in flight then complete at once, which releases the descriptors: tokio-uring
/// closes a socket only after its last operation has finished.
struct ShutdownOnDrop([RawFd; 2]);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        for fd in self.0 {
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
    }
}

fn to_uring(s: tokio::net::TcpStream) -> io::Result<tokio_uring::net::TcpStream> {
    let s = s.into_std()?;
    // io_uring waits for a blocking socket itself; a non-blocking one would fail with EAGAIN.
    s.set_nonblocking(false)?;
    Ok(tokio_uring::net::TcpStream::from_std(s))
}

/// Relays between `a` and `b` through io_uring until both directions reach end of stream or
/// one fails; counts bytes as [`crate::relay::splice::relay`] does. Must run on a uring thread.
async fn relay(
    a: tokio::net::TcpStream,
    b: tokio::net::TcpStream,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> io::Result<()> {
    let a = to_uring(a)?;
    let b = to_uring(b)?;
    let _shutdown = ShutdownOnDrop([a.as_raw_fd(), b.as_raw_fd()]);
    tokio::try_join!(one_way(&a, &b, a_to_b), one_way(&b, &a, b_to_a)).map(|_| ())
}

async fn one_way(
    src: &tokio_uring::net::TcpStream,
    dst: &tokio_uring::net::TcpStream,
    count: &AtomicU64,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(MIN_READ);
    loop {
        buf.clear();
        let (r, b) = src.read(buf).await;
        buf = b;
        let n = r?;
        if n == 0 {
            return match dst.shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        let full = n == buf.capacity();
        let (r, b) = dst.write_all(buf).await;
        buf = b;
        r?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if full && buf.capacity() < MAX_READ {
            buf = Vec::with_capacity(buf.capacity() * 2);
        } else if n <= buf.capacity() / 8 && buf.capacity() > MIN_READ {
            buf = Vec::with_capacity(MIN_READ);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A loopback connection: the outside end, and the inside end a relay takes.
    fn loopback() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let outside = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (inside, _) = l.accept().unwrap();
        inside.set_nonblocking(true).unwrap();
        (outside, inside)
    }

    /// Relays between `a` and `b` on a uring thread (handed over through [`relay_here`], as a
    /// connection's task does, or not) for at most `limit`, then keeps that
    /// thread's runtime until `hold` resolves. `None`: the relay was still running at `limit`
    /// and was dropped; otherwise its result and the bytes moved each way.
    fn relay_on_uring(
        a: std::net::TcpStream,
        b: std::net::TcpStream,
        limit: Duration,
        hold: tokio::sync::oneshot::Receiver<()>,
        handed_over: bool,
    ) -> std::thread::JoinHandle<Option<(io::Result<()>, u64, u64)>> {
        std::thread::spawn(move || {
            block_on(IoDriver::Uring, Duration::ZERO, async move {
                assert!(
                    on_this_thread(),
                    "io_uring must be usable where these tests run"
                );
                let a = tokio::net::TcpStream::from_std(a).unwrap();
                let b = tokio::net::TcpStream::from_std(b).unwrap();
                let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                let r = if handed_over {
                    let relay = relay_here(a, b, up.clone(), down.clone());
                    tokio::time::timeout(limit, relay).await
                } else {
                    tokio::time::timeout(limit, relay(a, b, &up, &down)).await
                };
                let _ = hold.await;
                let moved = |c: &AtomicU64| c.load(Ordering::Relaxed);
                r.ok().map(|r| (r, moved(&up), moved(&down)))
            })
            .unwrap()
        })
    }

    #[test]
    fn relays_both_ways_counts_and_propagates_end_of_stream() {
        let (mut ca, sa) = loopback();
        let (mut cb, sb) = loopback();
        let (_, hold) = tokio::sync::oneshot::channel();
        let t = relay_on_uring(sa, sb, Duration::from_secs(30), hold, true);
        // More than one read's worth, so the buffer grows, in a pattern that shows reordering.
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut ca2 = ca.try_clone().unwrap();
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            ca2.write_all(&to_send).unwrap();
            ca2.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        cb.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes arrived changed or out of order");
        cb.write_all(b"and back").unwrap();
        cb.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        ca.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"and back");
        let (r, up, down) = t.join().unwrap().expect("the relay did not finish");
        r.unwrap();
        assert_eq!((up, down), (3_000_000, 8));
    }

    #[test]
    fn dropping_the_relay_closes_both_connections() {
        dropped_relay_closes_both_connections(false);
    }

    #[test]
    fn dropping_a_connection_task_closes_its_handed_over_relay() {
        dropped_relay_closes_both_connections(true);
    }

    fn dropped_relay_closes_both_connections(handed_over: bool) {
        let (mut ca, sa) = loopback();
        let (mut cb, sb) = loopback();
        // Both reads are in flight on idle sockets when the relay is dropped, as when a session
        // is canceled. The runtime lives on until the test has looked: its end would close
        // every socket it still holds.
        let (done, hold) = tokio::sync::oneshot::channel();
        let t = relay_on_uring(sa, sb, Duration::from_millis(200), hold, handed_over);
        let timeout = Some(Duration::from_secs(3));
        ca.set_read_timeout(timeout).unwrap();
        cb.set_read_timeout(timeout).unwrap();
        let mut b = [0u8; 1];
        let a_end = ca.read(&mut b);
        let b_end = cb.read(&mut b);
        let _ = done.send(());
        assert!(
            t.join().unwrap().is_none(),
            "the relay of idle connections ended by itself"
        );
        assert_eq!(a_end.ok(), Some(0), "client end not closed");
        assert_eq!(b_end.ok(), Some(0), "target end not closed");
    }

    #[test]
    fn driver_names_parse_and_unknown_ones_are_refused() {
        assert_eq!("epoll".parse::<IoDriver>(), Ok(IoDriver::Epoll));
        assert_eq!("uring".parse::<IoDriver>(), Ok(IoDriver::Uring));
        let e = "kqueue".parse::<IoDriver>().unwrap_err();
        assert!(e.contains("\"epoll\" or \"uring\""), "{e}");
    }
}
