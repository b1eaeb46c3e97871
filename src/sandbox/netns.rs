//! Network namespaces: each instance gets a fresh one with only `lo`, made ahead of time.
//!
//! Creating a network namespace is the most expensive part of a clone (about 0.6 ms p50 and
//! 3 ms p99 here, `notes/cgroups.md` §3), so a small pool is kept ready: a thread unshares a
//! new namespace, brings `lo` up in it, keeps an fd to it and returns to its own. The child
//! joins its namespace with `setns` as its first step. A namespace is never reused.
//!
//! Besides `127.0.0.1`, `lo` carries [`INSTANCE_ADDR`], the instance's own address, and fcsup
//! connects to that: like FC, a server that listens only on loopback never becomes ready
//! (README, Behaviour decisions), and one on `0.0.0.0` does.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};

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
    static HOME: OwnedFd = open_netns().expect("open own network namespace");
}

/// The calling thread's network namespace, as an fd.
fn open_netns() -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(c"/proc/thread-self/ns/net", OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?)
}

/// Moves the calling thread into the network namespace at `ns`.
fn enter(ns: &OwnedFd) -> io::Result<()> {
    Ok(nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)?)
}

/// Runs `f` with the calling thread inside `ns`, then returns the thread to its own.
fn inside<T>(ns: &OwnedFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    HOME.with(|home| {
        enter(ns)?;
        let r = f();
        enter(home).expect("return to the supervisor's network namespace");
        r
    })
}

impl Netns {
    /// A new namespace with `lo` up.
    pub fn create() -> io::Result<Netns> {
        HOME.with(|home| {
            // Affects only the calling thread.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            let made = open_netns().and_then(|ns| {
                loopback_up()?;
                unprivileged_ports()?;
                let probe = tcp_socket()?;
                probe.set_nonblocking(false)?;
                // Bounds a connect to a full backlog (never expected at start).
                probe.set_write_timeout(Some(std::time::Duration::from_millis(100)))?;
                Ok((ns, probe))
            });
            enter(home).expect("return to the supervisor's network namespace");
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
        let addr = SockaddrIn::from(std::net::SocketAddrV4::new(INSTANCE_ADDR, port));
        match nix::sys::socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {
                sock.set_nonblocking(true)?;
                Ok(Some(sock))
            }
            Err(nix::errno::Errno::ECONNREFUSED) => {
                // A refused TCP socket is back in CLOSE and may connect again.
                *slot = Some(sock);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The fd the child joins with `setns`.
    pub fn fd(&self) -> &OwnedFd {
        &self.ns
    }

    /// A non-blocking TCP listener on `addr` inside the namespace (for FC's runtime API, which
    /// the instance reaches on its own loopback while fcsup serves it).
    pub fn listen(&self, addr: std::net::SocketAddrV4) -> io::Result<std::net::TcpListener> {
        let l = inside(&self.ns, || std::net::TcpListener::bind(addr))?;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// A non-blocking TCP socket created inside the namespace, so connecting to
    /// `INSTANCE_ADDR:port` reaches the function however many instances use that port.
    pub fn socket(&self) -> io::Result<std::net::TcpStream> {
        inside(&self.ns, tcp_socket)
    }
}

fn tcp_socket() -> io::Result<std::net::TcpStream> {
    let fd = nix::sys::socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    Ok(std::net::TcpStream::from(fd))
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
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    req
}

// The interface ioctls, wrapped by nix's macros.
nix::ioctl_readwrite_bad!(
    /// Reads an interface's flags.
    siocgifflags,
    libc::SIOCGIFFLAGS,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// Sets an interface's flags.
    siocsifflags,
    libc::SIOCSIFFLAGS,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// Sets an interface's (or alias's) IPv4 address.
    siocsifaddr,
    libc::SIOCSIFADDR,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// Sets an interface's (or alias's) IPv4 netmask.
    siocsifnetmask,
    libc::SIOCSIFNETMASK,
    libc::ifreq
);

fn set_addr(req: &mut libc::ifreq, addr: std::net::Ipv4Addr) {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits"),
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
    let fd = s.as_raw_fd();
    let mut lo = ifreq(b"lo");
    // SAFETY: interface ioctls on our socket, each with a valid ifreq that lives for the call;
    // SIOCGIFFLAGS fills the flags member of the union that is then read.
    unsafe {
        siocgifflags(fd, &mut lo)?;
        lo.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP fits");
        siocsifflags(fd, &lo)?;
    }
    let mut alias = ifreq(b"lo:fc");
    set_addr(&mut alias, INSTANCE_ADDR);
    let mut mask = ifreq(b"lo:fc");
    set_addr(&mut mask, std::net::Ipv4Addr::BROADCAST);
    // SAFETY: as above.
    unsafe {
        siocsifaddr(fd, &alias)?;
        siocsifnetmask(fd, &mask)?;
    }
    Ok(())
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
