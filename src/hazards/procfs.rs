//! What the kernel shows of a frozen instance: its threads (`/proc/<pid>/task/*/{stat,
//! schedstat,syscall}`), its sockets (`/proc/<pid>/net/{tcp,tcp6,udp,udp6}`, which show the
//! network namespace of that process) and its processes. Parsers are pure; readers skip what
//! vanished meanwhile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fields of `/proc/<pid>/task/<tid>/stat` fcsup uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `comm`: the thread's (or process's) name.
    pub comm: String,
    /// One letter: R, S, D, Z, T, …
    pub state: char,
    /// The parent's pid.
    pub ppid: i32,
    /// Start time after boot, in clock ticks (with the pid, it names a process uniquely).
    pub starttime: u64,
}

/// Parses a `stat` line (the name may hold spaces and parentheses: it ends at the last `)`).
pub fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 2..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let starttime = rest.get(19)?.parse().ok()?;
    Some(Stat { comm, state, ppid, starttime })
}

/// The first field of `schedstat`: ns the thread spent on a CPU (exact, unlike `stat`'s
/// utime + stime, which count clock ticks of 10 ms).
pub fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_ascii_whitespace().next()?.parse().ok()
}

/// Whether `/proc/<pid>/task/<tid>/syscall` of a stopped thread says it was in user mode
/// (`-1 sp pc`): a frozen thread that was blocked in a system call shows its number instead,
/// so `-1` means it was running or runnable when the freeze caught it.
pub fn in_user_mode(syscall: &str) -> bool {
    syscall.split_ascii_whitespace().next() == Some("-1")
}

/// A thread of the instance.
#[derive(Debug, Clone)]
pub struct Thread {
    /// Host pid of its process.
    pub pid: i32,
    /// Host tid.
    pub tid: i32,
    /// Its stat.
    pub stat: Stat,
    /// ns on a CPU so far.
    pub cpu_ns: u64,
    /// In user mode when read (meaningful when frozen).
    pub user_mode: bool,
}

/// The tids of `pid`.
fn tids(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Every thread of `pids`, with where it stood.
pub fn threads(pids: &[i32]) -> Vec<Thread> {
    let mut out = Vec::new();
    for &pid in pids {
        for tid in tids(pid) {
            let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}")).ok();
            let Some(stat) = read("stat").as_deref().and_then(parse_stat) else { continue };
            let cpu_ns = read("schedstat").as_deref().and_then(parse_schedstat).unwrap_or(0);
            let user_mode = read("syscall").as_deref().is_some_and(in_user_mode);
            out.push(Thread { pid, tid, stat, cpu_ns, user_mode });
        }
    }
    out
}

/// A process's stat (its main thread's).
pub fn process(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Transport of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One line of `/proc/net/{tcp,udp}{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// Transport.
    pub proto: Proto,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// The kernel's state number (TCP: 1 ESTABLISHED, 2 SYN_SENT, 3 SYN_RECV, 10 LISTEN, …).
    pub state: u8,
    /// TCP: bytes not yet acknowledged by the peer (sent or not); UDP: bytes queued to send.
    pub tx_queue: u64,
    /// Bytes received, not yet read.
    pub rx_queue: u64,
}

/// TCP state names, as `ss` prints them.
pub fn tcp_state(n: u8) -> &'static str {
    match n {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// Parses `ADDR:PORT` as the kernel prints it: the address's 32-bit words in hex, each in the
/// host's byte order, the port in hex.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses a whole `/proc/net/{tcp,udp}{,6}` file.
pub fn parse_net(text: &str, proto: Proto) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(Socket {
                proto,
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// The sockets of the network namespace `pid` is in.
pub fn sockets(pid: i32) -> Vec<Socket> {
    let mut out = Vec::new();
    for (f, proto) in [("tcp", Proto::Tcp), ("tcp6", Proto::Tcp), ("udp", Proto::Udp), ("udp6", Proto::Udp)] {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")) {
            out.extend(parse_net(&t, proto));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_with_spaces_and_parentheses_parse() {
        let s = "4242 (my (odd) name) R 4000 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 123456 1000 100";
        let st = parse_stat(s).unwrap();
        assert_eq!(st, Stat { comm: "my (odd) name".into(), state: 'R', ppid: 4000, starttime: 123456 });
        assert_eq!(parse_schedstat("106614072 4000 12\n"), Some(106614072));
        assert!(in_user_mode("-1 0x7ffd 0x4011\n"));
        assert!(!in_user_mode("230 0x0 0x1 0x2 0x3 0x4 0x5 0x7ffd 0x4011\n"));
        assert!(!in_user_mode("running\n"));
    }

    #[test]
    fn net_lines_parse_with_their_queues() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1B58 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9D78 0100007F:1B58 01 00001000:00000000 01:00000014 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:9D7A 0509000A:01BB 02 00000000:00000000 01:00000014 00000000     0        0 3 1 0 20 4 30 10 -1
";
        let v = parse_net(tcp, Proto::Tcp);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].local, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((v[0].state, v[0].rx_queue), (10, 1));
        assert_eq!(v[1].remote, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((v[1].state, v[1].tx_queue), (1, 4096));
        assert_eq!(v[2].remote, "10.0.9.5:443".parse().unwrap());
        assert_eq!(tcp_state(v[2].state), "SYN_SENT");
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:9D78 01 00000010:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
";
        let v = parse_net(tcp6, Proto::Tcp);
        assert_eq!(v[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(v[0].remote, "127.0.0.1:40312".parse().unwrap());
        assert_eq!(v[0].tx_queue, 16);
    }
}
