//! Small helpers shared by several modules: ids, timestamps, a fine-grained sleep.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
            it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos().max(1) as libc::c_long },
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

/// An FC 3.0 style request id: `1-<8 hex seconds>-<24 hex>`.
pub fn request_id() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("1-{:08x}-{}", secs as u32, &r[..24])
}

/// An FC style instance id: `c-<8 hex>-<8 hex>-<12 hex>`.
pub fn instance_id() -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("c-{}-{}-{}", &r[..8], &r[8..16], &r[16..28])
}

/// A hook's request id (FC uses plain UUIDs for hooks).
pub fn hook_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for now.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in ms since the epoch (UTC, proleptic Gregorian).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fc_shapes() {
        let r = request_id();
        assert_eq!(r.len(), 2 + 8 + 1 + 24);
        assert!(r.starts_with("1-"));
        let i = instance_id();
        assert!(i.starts_with("c-") && i.len() == 2 + 8 + 1 + 8 + 1 + 12, "{i}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_462_496_123), "2026-11-23T19:34:56.123Z");
    }
}
