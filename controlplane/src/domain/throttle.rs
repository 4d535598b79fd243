//! Limits on password authentication: failed attempts per login name, and how many Argon2
//! verifications run at once (each takes ~19 MiB and tens of milliseconds of a core).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Failed attempts allowed per login name within [`WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// How long failures count; a login name that reached the limit waits this long after its
/// first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Argon2 verifications at once; further logins wait for a slot.
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// How long a login waits for a slot before it is refused as busy.
const SLOT_WAIT: Duration = Duration::from_secs(10);
/// Login names remembered at most (unknown names count too, so probing cannot tell).
const MAX_TRACKED: usize = 100_000;

pub(crate) struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    hashes: tokio::sync::Semaphore,
    window: Duration,
}

impl LoginThrottle {
    pub(crate) fn new() -> Self {
        Self::with_window(WINDOW)
    }

    fn with_window(window: Duration) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            hashes: tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES),
            window,
        }
    }

    fn key(auth_method_id: &str, login_name: &str) -> String {
        format!("{auth_method_id}/{}", login_name.to_lowercase())
    }

    /// Counts an attempt for a login name before its password is checked, or refuses it once
    /// [`MAX_FAILURES`] attempts are counted within the window, saying how long to wait.
    /// Counting first means a burst of parallel guesses gets no more evaluations than a
    /// sequence would; a success clears the count ([`Self::succeeded`]).
    pub(crate) fn attempt(&self, auth_method_id: &str, login_name: &str) -> Result<(), Error> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        let e = map
            .entry(Self::key(auth_method_id, login_name))
            .or_insert((0, Instant::now()));
        let elapsed = e.1.elapsed();
        if elapsed >= self.window {
            *e = (0, Instant::now());
        } else if e.0 >= MAX_FAILURES {
            let wait = (self.window - elapsed).as_secs() + 1;
            return Err(Error::exhausted(format!(
                "too many failed attempts for login name {login_name:?}: try again in {wait} s"
            )));
        }
        e.0 += 1;
        Ok(())
    }

    /// Forgets the failures of a login name that got in.
    pub(crate) fn succeeded(&self, auth_method_id: &str, login_name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(auth_method_id, login_name));
    }

    /// A slot to run one password hash in.
    pub(crate) async fn hash_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        match tokio::time::timeout(SLOT_WAIT, self.hashes.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Error::unavailable(
                "the controller is busy checking other logins; try again shortly",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_name_is_locked_after_repeated_attempts_and_only_that_one() {
        let t = LoginThrottle::with_window(Duration::from_millis(300));
        for _ in 0..MAX_FAILURES {
            t.attempt("ampw_1", "dora").unwrap();
        }
        let e = t.attempt("ampw_1", "Dora").unwrap_err();
        assert!(matches!(e, Error::Exhausted(_)), "{e:?}");
        assert!(e.message().contains("try again in"), "{e}");
        t.attempt("ampw_1", "eve").unwrap();
        t.attempt("ampw_2", "dora").unwrap();
        std::thread::sleep(Duration::from_millis(350));
        t.attempt("ampw_1", "dora").unwrap();
        // A success clears the count.
        for _ in 0..MAX_FAILURES - 2 {
            t.attempt("ampw_1", "eve").unwrap();
        }
        t.succeeded("ampw_1", "eve");
        for _ in 0..MAX_FAILURES {
            t.attempt("ampw_1", "eve").unwrap();
        }
        t.attempt("ampw_1", "eve").unwrap_err();
    }
}
