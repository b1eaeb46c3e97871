//! Sleeps with microsecond precision: tokio's timer ticks in milliseconds, but a freeze is
//! confirmed in ~100 µs and a fresh instance starts listening within a millisecond, so their
//! re-checks sleep on a timerfd instead.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A timerfd for sleeps with microsecond precision (tokio's timer ticks in milliseconds),
/// reusable: a waiter that re-checks every few tens of µs keeps one instead of making one per
/// sleep.
#[derive(Debug)]
pub struct FineTimer {
    fd: AsyncFd<Registered>,
}

/// The timerfd as tokio's reactor takes it (nix's `TimerFd` offers `AsFd` only).
#[derive(Debug)]
struct Registered(TimerFd);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FineTimer {
    /// A new timer (inside a tokio runtime).
    pub fn new() -> std::io::Result<FineTimer> {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: `Registered` owns the timerfd and always returns that fd, so it stays open
        // and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(Registered(timer), Interest::READABLE)? };
        Ok(FineTimer { fd })
    }

    /// Sleeps for `d`. Arming resets any expiry left from a sleep that was cancelled.
    pub async fn sleep(&self, d: Duration) {
        // A zero expiry would disarm the timer instead of firing it.
        let expiry = Expiration::OneShot(TimeSpec::from_duration(d.max(Duration::from_nanos(1))));
        if self.fd.get_ref().0.set(expiry, TimerSetTimeFlags::empty()).is_err() {
            return tokio::time::sleep(d).await;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else { return tokio::time::sleep(d).await };
            let mut ticks = [0u8; 8];
            match nix::unistd::read(self.fd.get_ref().0.as_fd(), &mut ticks) {
                Ok(8) => return,
                // Stale readiness (the expiry was consumed or re-armed): wait again.
                Ok(_) | Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(_) => return tokio::time::sleep(d).await,
            }
        }
    }
}

/// One sleep with microsecond precision.
pub async fn fine_sleep(d: Duration) {
    match FineTimer::new() {
        Ok(t) => t.sleep(d).await,
        Err(_) => tokio::time::sleep(d).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn sleeps_at_least_as_long_as_asked_and_can_be_reused() {
        let t = FineTimer::new().unwrap();
        for d in [Duration::ZERO, Duration::from_micros(50), Duration::from_millis(2)] {
            let start = Instant::now();
            t.sleep(d).await;
            assert!(start.elapsed() >= d, "{d:?} took {:?}", start.elapsed());
        }
        // A sleep cancelled before its expiry leaves nothing behind for the next one.
        let _ = tokio::time::timeout(Duration::from_micros(10), t.sleep(Duration::from_millis(50))).await;
        let start = Instant::now();
        t.sleep(Duration::from_millis(5)).await;
        assert!(start.elapsed() >= Duration::from_millis(5));
    }
}
