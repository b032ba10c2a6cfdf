//! The cluster's clock on this machine: milliseconds of the system-wide
//! monotonic clock (time since boot on Linux).
//!
//! Heartbeat nonces are times on this clock, echoed back by peers as proof
//! that a link works both ways. A clock shared by every process of the
//! machine means a node restarted a moment ago can tell an echo of its
//! previous run (sent before it started) from one of its own, which a clock
//! starting at zero in every process could not.

/// Now, in milliseconds.
#[cfg(unix)]
pub fn now() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; CLOCK_MONOTONIC exists
    // on every unix the node builds for.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    if done != 0 {
        return fallback();
    }
    (time.tv_sec as u64) * 1_000 + (time.tv_nsec as u64) / 1_000_000
}

#[cfg(not(unix))]
pub fn now() -> u64 {
    fallback()
}

/// A monotonic clock that starts with the process.
fn fallback() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_never_goes_back() {
        let mut last = super::now();
        for _ in 0..1_000 {
            let now = super::now();
            assert!(now >= last);
            last = now;
        }
    }
}
