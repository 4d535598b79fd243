//! Busy polling after small transfers, so that a request and its answer do not each pay for
//! waking the worker thread.
//!
//! A worker thread that sleeps in `epoll_wait` between a request and its answer is woken by
//! the kernel when the next bytes arrive. On this kind of machine (virtual CPUs) that wake-up
//! is most of what a proxy adds to a round trip (benches/RESULTS.md, docs/design.md). So after
//! a relay moves a small amount, as interactive traffic does (keystrokes, queries and their
//! answers), the thread keeps polling for events without sleeping for a short window.
//!
//! - Bulk transfers move large chunks and do not open the window.
//! - An idle thread goes back to sleep when the window ends, so the CPU this costs is at most
//!   one window per small transfer.
//! - Each turn of the poll gives the core away (`sched_yield`) if anything else is waiting to
//!   run on it, so the poller does not keep the target or the client off a shared core. A
//!   process that runs briefly there (the target echoing, the client reading) does not end the
//!   window: its answer is what the poller waits for.
//! - A turn that took long ends the window: the core was held by other work for longer than a
//!   request and its answer take, and polling then only takes CPU from it.
//!
//! HAProxy's `busy-polling` (off by default) is the same idea for a whole process, with no
//! window. Here the window is per worker thread (each runs its own runtime). The polling is done
//! by a task that yields: with a task ready to run, Tokio polls its I/O driver with a zero
//! timeout instead of sleeping.

use std::cell::Cell;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The window after a small transfer unless configured otherwise: longer than a round trip
/// through a proxy on one machine (~30–80 µs here), so a request/answer exchange keeps it
/// open, and short enough that a thread back to idle costs little.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(50);

/// The window a process uses unless told otherwise: [`DEFAULT_WINDOW`], or none on a machine
/// with one CPU. There, whatever a poller waits for (the application, the target, the other
/// Sluice process) runs only when the poller gives the CPU away, so polling only adds turns in
/// between: with every process pinned to one CPU, round trips through `connect` and the worker
/// measured 7–8 µs slower with it (docs/tuning.md).
pub fn default_window() -> Duration {
    window_for(online_cpus())
}

fn window_for(online_cpus: Option<usize>) -> Duration {
    if online_cpus == Some(1) {
        Duration::ZERO
    } else {
        DEFAULT_WINDOW
    }
}

/// CPUs online on this machine (not the ones this process may use: a process pinned to one
/// CPU may still wait for others running elsewhere), from `/sys/devices/system/cpu/online`.
fn online_cpus() -> Option<usize> {
    count_cpus(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b
                .parse::<usize>()
                .ok()?
                .checked_sub(a.parse::<usize>().ok()?)?
                .checked_add(1)?,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// A transfer of at most this many bytes opens the window.
const SMALL: usize = 16 * 1024;

/// A turn of the poll longer than this closes the window. An idle turn takes ~3 µs and one
/// that relays a message ~10–20 µs here; a longer one means the thread was busy anyway, or
/// off its core while other processes ran.
const LONG_TURN: Duration = Duration::from_micros(100);

struct Window {
    /// How long to poll after a small transfer.
    length: Duration,
    /// Until when this thread polls; `None` while it sleeps.
    until: Cell<Option<Instant>>,
    wake: Notify,
    /// Turns of the poll so far (for tests: polling must start and must stop).
    turns: Cell<u64>,
}

thread_local! {
    static WINDOW: Cell<Option<&'static Window>> = const { Cell::new(None) };
}

/// Records that a relay on this thread moved `n` bytes: a small transfer opens (or extends)
/// the window. Costs one thread-local read on a thread without polling.
#[inline]
pub(crate) fn moved(n: usize) {
    if n == 0 || n > SMALL {
        return;
    }
    WINDOW.with(|w| {
        if let Some(w) = w.get() {
            let was_sleeping = w.until.get().is_none();
            w.until.set(Some(Instant::now() + w.length));
            if was_sleeping {
                w.wake.notify_one();
            }
        }
    });
}

/// One direction of one relay, as the window sees it: its first transfer opens no window, the
/// later ones go to [`moved`].
///
/// A connection that carries one request and its answer, then closes (a health check, a
/// one-shot HTTP request, the harness's new-connection round), has nothing to wait for after
/// it, and a thread polling then only competes for the cores with the processes that close it
/// and open the next one. With `connect` polling after every transfer, a new connection's first
/// echoed byte came 25-50 µs later; letting a request's first transfer open the window (its
/// answer is on the way) did not win that back (docs/tuning.md).
/// Interactive traffic goes back and forth many times on one connection, and polls from the
/// second transfer each way.
#[derive(Debug, Default)]
pub(crate) struct Direction {
    moved_before: bool,
}

impl Direction {
    /// Records that this direction moved `n` bytes (see [`moved`]).
    #[inline]
    pub(crate) fn moved(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.moved_before {
            moved(n);
        } else {
            self.moved_before = true;
        }
    }
}

/// Runs `fut` with a polling window of `length` after each small transfer on this thread
/// (`Duration::ZERO`: no polling). `fut` must be what the thread runs for its whole life: the
/// window belongs to the thread, and its few bytes are kept until the process exits.
///
/// Worker threads run under it, and so does `sluice connect`'s one thread, whose relays are the
/// worker's own: without it, a round trip through the full path wakes a sleeping `connect`
/// twice (for the request and for the answer), each wake-up as costly as the worker's.
/// The runtime must be single-threaded (Tokio's `current_thread`): relays on other threads
/// would not open this window.
pub async fn with_polling<F: std::future::Future>(length: Duration, fut: F) -> F::Output {
    if length.is_zero() {
        return fut.await;
    }
    // The CLI refuses more than a second; a library caller's longer window is cut to that, so
    // `Instant + length` cannot overflow.
    let length = length.min(Duration::from_secs(1));
    // One per worker thread: leaked so that `moved` needs no reference counting.
    let window: &'static Window = Box::leak(Box::new(Window {
        length,
        until: Cell::new(None),
        wake: Notify::new(),
        turns: Cell::new(0),
    }));
    WINDOW.with(|w| w.set(Some(window)));
    let poller = async {
        let mut first = true;
        loop {
            window.wake.notified().await;
            if first {
                // Once per thread, so `SLUICE_LOG=debug` shows that polling is on without a
                // line per keystroke.
                tracing::debug!(window = ?length, "busy polling after a small transfer");
                first = false;
            }
            loop {
                let turn = Instant::now();
                // Counted as it starts, so a test sees the poll begin even if its own timer
                // fires before the turn ends (a busy machine can hold the thread that long).
                window.turns.set(window.turns.get() + 1);
                // Gives the core to anything else that is ready to run on it; returns at once
                // otherwise.
                std::thread::yield_now();
                // With this task ready again, Tokio polls for events without sleeping.
                tokio::task::yield_now().await;
                let now = Instant::now();
                // A long turn: the thread was busy, or other work held its core. Polling then
                // only takes CPU from that work. A short one that handed the core over (to the
                // target or the client, about to answer) keeps the window: closing it there
                // made the full path's round trip p50 +42-61 us instead of +23-36, since the
                // answer then has to wake the thread (docs/tuning.md).
                let long = now - turn > LONG_TURN;
                match window.until.get() {
                    Some(until) if now < until && !long => {}
                    _ => {
                        window.until.set(None);
                        break;
                    }
                }
            }
        }
    };
    let out = tokio::select! {
        biased;
        out = fut => out,
        _ = poller => unreachable!("the poller never ends"),
    };
    WINDOW.with(|w| w.set(None));
    out
}

/// Whether this machine's idle CPUs halt at once: a VM guest whose idle driver is `haltpoll`
/// with `haltpoll.guest_halt_poll_ns=0` (the kernel's default is 200,000). Every wake-up of an
/// idle vCPU then waits for the host, and this window is all that spares a relay that cost.
/// With the kernel's default, new connections through Sluice took half the time beyond their
/// round trip on such a VM (docs/tuning.md).
pub(crate) fn idle_cpus_halt_at_once() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    halt_at_once(
        read("/sys/devices/system/cpu/cpuidle/current_driver").as_deref(),
        read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").as_deref(),
    )
}

fn halt_at_once(driver: Option<&str>, guest_halt_poll_ns: Option<&str>) -> bool {
    driver.map(str::trim) == Some("haltpoll") && guest_halt_poll_ns.map(str::trim) == Some("0")
}

/// Turns of this thread's poll so far; `None` without a window.
#[cfg(test)]
fn turns() -> Option<u64> {
    WINDOW.with(|w| w.get().map(|w| w.turns.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_machine_with_one_cpu_does_not_poll_by_default() {
        assert_eq!(count_cpus("0\n"), Some(1));
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpus("3-1"), None, "a backwards range is not a count");
        assert_eq!(count_cpus(""), None);
        assert_eq!(window_for(Some(1)), Duration::ZERO);
        assert_eq!(window_for(Some(2)), DEFAULT_WINDOW);
        assert_eq!(window_for(None), DEFAULT_WINDOW, "unknown: poll as before");
        // This machine: its own count decides.
        let here = online_cpus().expect("/sys/devices/system/cpu/online");
        assert_eq!(default_window().is_zero(), here == 1);
    }

    #[test]
    fn only_a_haltpoll_guest_with_polling_off_halts_its_idle_cpus_at_once() {
        assert!(halt_at_once(Some("haltpoll\n"), Some("0\n")));
        assert!(!halt_at_once(Some("haltpoll\n"), Some("200000\n")));
        assert!(!halt_at_once(Some("intel_idle\n"), None));
        assert!(!halt_at_once(Some("acpi_idle\n"), Some("0\n")));
        assert!(
            !halt_at_once(None, None),
            "no cpuidle in sysfs: nothing to say"
        );
    }

    #[test]
    fn a_small_transfer_polls_for_the_window_then_the_thread_sleeps_again() {
        runtime().block_on(with_polling(Duration::from_millis(20), async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(turns(), Some(0), "nothing moved yet, so nothing polls");
            moved(64);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let during = turns().unwrap();
            assert!(during > 0, "a small transfer starts polling");
            // The window is 20 ms from the transfer (or less, if a turn was slow on a busy
            // machine); well after it, polling has stopped.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let after = assert_still_for(
                Duration::from_millis(60),
                "the thread sleeps once the window is over",
            )
            .await;
            // A later small transfer starts it again.
            moved(1);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                turns().unwrap() > after,
                "a new transfer reopens the window"
            );
        }));
    }

    #[test]
    fn a_turn_that_loses_the_core_ends_the_window() {
        runtime().block_on(with_polling(Duration::from_secs(1), async {
            moved(64);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(turns().unwrap() > 0, "a small transfer starts polling");
            // The thread is taken away for longer than a turn may last, as when other
            // processes hold the core: the window (1 s) closes at once.
            std::thread::sleep(Duration::from_millis(2));
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_still_for(
                Duration::from_millis(50),
                "polling stopped well before the window's end",
            )
            .await;
        }));
    }

    /// Asserts that no turn of the poll happens for `quiet`; returns the turns so far.
    async fn assert_still_for(quiet: Duration, why: &str) -> u64 {
        let before = turns().unwrap();
        tokio::time::sleep(quiet).await;
        assert_eq!(turns(), Some(before), "{why}");
        before
    }

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    }

    #[test]
    fn a_neighbour_that_runs_briefly_on_the_core_does_not_end_the_window() {
        let cpu = nix::sched::sched_getcpu().unwrap();
        pin(cpu);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // On the same core, a thread that works for ~20 us every ~200 us, as a client or a
        // target answering does: each burst is far shorter than LONG_TURN, and the poller's
        // yield hands the core over for it.
        let neighbour = std::thread::spawn({
            let stop = stop.clone();
            move || {
                pin(cpu);
                let mut bursts = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                    bursts += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                bursts
            }
        });
        // With the window ended at each of the neighbour's bursts (as it once was), polling
        // never outlasts one of them: at most one gap of ~250 us, about 125 turns of ~2 us. A
        // stall of this virtual CPU over LONG_TURN also ends a window, rightly, so the window
        // gets a few tries, each spanning a dozen bursts.
        let outlasted = runtime().block_on(with_polling(Duration::from_secs(1), async {
            for _ in 0..10 {
                // Opens the window, or extends it if the last try's is still open.
                moved(64);
                tokio::time::sleep(Duration::from_millis(1)).await;
                let before = turns().unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                if turns().unwrap() - before > 200 {
                    return true;
                }
            }
            false
        }));
        assert!(
            outlasted,
            "the thread polled on through the neighbour's bursts in none of 10 tries"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bursts = neighbour.join().unwrap();
        assert!(bursts > 0, "the neighbour ran beside the poller");
    }

    #[test]
    fn a_relay_direction_polls_from_its_second_transfer_on() {
        runtime().block_on(with_polling(Duration::from_millis(20), async {
            let mut dir = Direction::default();
            // Zero bytes (a send that would block, an end of stream) is no transfer.
            moved(0);
            dir.moved(0);
            dir.moved(64);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(
                turns(),
                Some(0),
                "a direction's first transfer opens no window"
            );
            dir.moved(64);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(turns().unwrap() > 0, "its second does");
        }));
    }

    #[test]
    fn bulk_transfers_do_not_poll() {
        runtime().block_on(with_polling(Duration::from_millis(20), async {
            for _ in 0..100 {
                moved(SMALL + 1);
                moved(1 << 20);
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(turns(), Some(0));
        }));
    }

    #[test]
    fn a_zero_window_never_polls_and_the_future_still_runs() {
        let out = runtime().block_on(with_polling(Duration::ZERO, async {
            moved(1);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(turns(), None);
            7
        }));
        assert_eq!(out, 7);
        // Once `with_polling` returns, the thread has no window.
        assert_eq!(turns(), None);
    }
}
