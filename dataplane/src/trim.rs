//! Giving memory freed after a burst of traffic back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas: after 1,000 streams of bulk data the
//! worker's resident memory stayed at its peak (about 4x its idle size) although nothing was in
//! use any more. `malloc_trim(0)` returns the free pages of every arena. It runs on a thread of
//! its own, only after connections have closed, and at most every [`TRIM_EVERY`], so the
//! relaying threads never wait for it beyond the arena lock it takes briefly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

/// How often the trimmer looks for closed connections.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Returns free heap memory to the system; a no-op off glibc.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their locks;
    // it may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts the trimmer thread: every [`TRIM_EVERY`], if `closed` moved since it last looked, it
/// trims. It ends when `stop` is set.
pub(crate) fn spawn(
    closed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-worker-trim".into())
        .spawn(move || {
            let mut seen = closed.load(Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(TRIM_EVERY);
                let now = closed.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    let start = Instant::now();
                    release_free_memory();
                    debug!(
                        took_us = start.elapsed().as_micros() as u64,
                        "returned free memory"
                    );
                }
            }
        })
}
