//! Sleeps with microsecond precision: tokio's timer ticks in milliseconds, but a freeze is
//! confirmed in ~100 µs and a fresh instance starts listening within a millisecond, so their
//! re-checks sleep on a timerfd instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A timerfd for sleeps with microsecond precision (tokio's timer ticks in milliseconds),
/// reusable: a waiter that re-checks every few tens of µs keeps one instead of making one per
/// sleep.
#[derive(Debug)]
pub struct FineTimer {
    fd: AsyncFd<OwnedFd>,
}

impl FineTimer {
    /// A new timer (inside a tokio runtime).
    pub fn new() -> std::io::Result<FineTimer> {
        // SAFETY: timerfd_create with constant flags; the fd is owned below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the timerfd for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(FineTimer { fd })
    }

    /// Sleeps for `d`. Arming resets any expiry left from a sleep that was cancelled.
    pub async fn sleep(&self, d: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(d.subsec_nanos().max(1)),
            },
        };
        // SAFETY: timerfd_settime with a valid itimerspec on our timerfd.
        if unsafe { libc::timerfd_settime(self.fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            return tokio::time::sleep(d).await;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else { return tokio::time::sleep(d).await };
            let mut ticks = [0u8; 8];
            // SAFETY: read(2) of 8 bytes into a stack buffer from our timerfd.
            let n = unsafe { libc::read(self.fd.get_ref().as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return;
            }
            // Stale readiness (the expiry was consumed or re-armed): wait again.
            guard.clear_ready();
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
