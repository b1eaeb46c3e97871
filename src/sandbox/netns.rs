//! Network namespaces: each instance gets a fresh one with only `lo`, made ahead of time.
//!
//! Creating a network namespace is the most expensive part of a clone (about 0.6 ms p50 and
//! 3 ms p99 here, `notes/cgroups.md` §3), so a small pool is kept ready: a thread unshares a
//! new namespace, brings `lo` up in it, keeps an fd to it and returns to its own. The child
//! joins its namespace with `setns` as its first step. A namespace is never reused.
//!
//! Besides `127.0.0.1`, `lo` carries [`INSTANCE_ADDR`], the instance's own address, and fcsup
//! connects to that: like FC, a server that listens only on loopback never becomes ready
//! (fc-spec §5.1), and one on `0.0.0.0` does.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::sys;

/// The address fcsup reaches each instance at, inside its own network namespace.
pub const INSTANCE_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 9, 1);

/// One network namespace, held open by an fd, with a socket already made inside it for the
/// readiness check (so polling a starting instance needs no `setns`).
#[derive(Debug)]
pub struct Netns {
    ns: OwnedFd,
    probe: Mutex<Option<std::net::TcpStream>>,
}

thread_local! {
    /// The calling thread's own network namespace, to return to.
    static HOME: OwnedFd = sys::open_ro(c"/proc/thread-self/ns/net").expect("open own network namespace");
}

/// Runs `f` with the calling thread inside `ns`, then returns the thread to its own.
fn inside<T>(ns: &OwnedFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    HOME.with(|home| {
        sys::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)?;
        let r = f();
        sys::setns(home.as_raw_fd(), libc::CLONE_NEWNET).expect("return to the supervisor's network namespace");
        r
    })
}

impl Netns {
    /// A new namespace with `lo` up.
    pub fn create() -> io::Result<Netns> {
        HOME.with(|home| {
            // SAFETY: unshare of the network namespace affects only the calling thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let made = sys::open_ro(c"/proc/thread-self/ns/net").and_then(|ns| {
                loopback_up()?;
                unprivileged_ports()?;
                let probe = tcp_socket()?;
                probe.set_nonblocking(false)?;
                // Bounds a connect to a full backlog (never expected at start).
                probe.set_write_timeout(Some(std::time::Duration::from_millis(100)))?;
                Ok((ns, probe))
            });
            sys::setns(home.as_raw_fd(), libc::CLONE_NEWNET).expect("return to the supervisor's network namespace");
            made.map(|(ns, probe)| Netns { ns, probe: Mutex::new(Some(probe)) })
        })
    }

    /// Tries once to connect to `INSTANCE_ADDR:port` in the namespace with the readiness socket:
    /// `Ok(None)` while nothing listens (the socket is kept for the next try). On loopback the
    /// connect completes or is refused at once.
    pub fn connect_ready(&self, port: u16) -> io::Result<Option<std::net::TcpStream>> {
        let mut slot = self.probe.lock().expect("probe socket");
        let sock = match slot.take() {
            Some(s) => s,
            None => {
                let s = self.socket()?;
                s.set_nonblocking(false)?;
                s
            }
        };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(INSTANCE_ADDR).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: connect(2) on our socket with a sockaddr_in of the right size.
        let r = unsafe {
            libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        };
        if r == 0 {
            sock.set_nonblocking(true)?;
            return Ok(Some(sock));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECONNREFUSED) {
            // A refused TCP socket is back in CLOSE and may connect again.
            *slot = Some(sock);
            return Ok(None);
        }
        Err(e)
    }

    /// The fd the child joins with `setns`.
    pub fn fd(&self) -> &OwnedFd {
        &self.ns
    }

    /// A non-blocking TCP socket created inside the namespace, so connecting to
    /// `INSTANCE_ADDR:port` reaches the function however many instances use that port.
    pub fn socket(&self) -> io::Result<std::net::TcpStream> {
        inside(&self.ns, tcp_socket)
    }
}

fn tcp_socket() -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2); the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

/// The function's root holds no capability over this namespace (it belongs to the host's user
/// namespace), yet FC functions may listen on port 80 and ping: every port and ICMP echo
/// sockets are open to any uid here, as Docker sets them for rootless containers.
fn unprivileged_ports() -> io::Result<()> {
    // /proc/sys/net shows the calling thread's network namespace.
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
}

fn ifreq(name: &[u8]) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req
}

fn ioctl(s: &std::net::TcpStream, op: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: an interface ioctl on our socket with a valid ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), op, req as *mut libc::ifreq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_addr(req: &mut libc::ifreq, addr: std::net::Ipv4Addr) {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: ifru_addr is a sockaddr, which a sockaddr_in fits exactly.
    unsafe { std::ptr::write((&mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast(), sin) };
}

/// Sets `lo` up in the calling thread's network namespace, with [`INSTANCE_ADDR`] on it.
fn loopback_up() -> io::Result<()> {
    let s = tcp_socket()?;
    let mut lo = ifreq(b"lo");
    ioctl(&s, libc::SIOCGIFFLAGS, &mut lo)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { lo.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&s, libc::SIOCSIFFLAGS, &mut lo)?;
    let mut alias = ifreq(b"lo:fc");
    set_addr(&mut alias, INSTANCE_ADDR);
    ioctl(&s, libc::SIOCSIFADDR, &mut alias)?;
    let mut mask = ifreq(b"lo:fc");
    set_addr(&mut mask, std::net::Ipv4Addr::BROADCAST);
    ioctl(&s, libc::SIOCSIFNETMASK, &mut mask)
}

/// Namespaces made ahead of time, refilled by a background thread.
#[derive(Debug)]
pub struct NetnsPool {
    ready: Mutex<Vec<Netns>>,
    target: usize,
    refilling: AtomicBool,
}

impl NetnsPool {
    /// A pool that keeps `target` namespaces ready (0: make each on demand).
    pub fn new(target: usize) -> Arc<NetnsPool> {
        let pool = Arc::new(NetnsPool { ready: Mutex::default(), target, refilling: AtomicBool::new(false) });
        pool.refill();
        pool
    }

    /// A ready namespace, or a new one when none is.
    pub fn take(self: &Arc<Self>) -> io::Result<Netns> {
        let ready = self.ready.lock().expect("netns pool").pop();
        self.refill();
        match ready {
            Some(ns) => Ok(ns),
            None => Netns::create(),
        }
    }

    fn refill(self: &Arc<Self>) {
        if self.target == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("fcsup-netns".into()).spawn(move || {
            while let Some(pool) = me.upgrade() {
                if pool.ready.lock().expect("netns pool").len() >= pool.target {
                    pool.refilling.store(false, Ordering::Release);
                    return;
                }
                match Netns::create() {
                    Ok(ns) => pool.ready.lock().expect("netns pool").push(ns),
                    Err(e) => {
                        tracing::warn!("cannot prepare a network namespace: {e}");
                        pool.refilling.store(false, Ordering::Release);
                        return;
                    }
                }
            }
        });
        if spawned.is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }
}
