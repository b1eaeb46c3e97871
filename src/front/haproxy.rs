//! An HAProxy 2.6 configuration for a list of fcsup nodes (README, "The front: HAProxy").
//!
//! Each function has a home node: consistent hashing on its name (from
//! `/2023-03-30/functions/NAME/invocations` and `/http/NAME/…`), bounded load so that one busy
//! function cannot pile onto one node. A node that is full answers 425 at once
//! (`api/health.rs`); HAProxy retries the request on another node (`retry-on 425`,
//! `option redispatch 1`: every retry picks a new server, and HAProxy's consistent hash skips
//! the server just tried), and turns a last 425 marked `X-Fcsup-Full` into FC's 429. Checked
//! against HAProxy 2.6's source: `chash_get_server_hash(…, avoid)` avoids only the previous
//! server, so with three or more nodes the bounded load (which skips servers above their share
//! of in-flight requests) is what walks the ring further.
//!
//! What is retried: connection failures, a connection closed with no answer (a node that stopped
//! between HAProxy's pick and its request), and 425. Never a response timeout (that would run
//! a long function again). Only requests whose head and body fit in one HAProxy buffer
//! (`tune.bufsize`, 16 KB by default) can be retried; larger ones go to one node, and its 425
//! becomes the client's 429.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::str::FromStr;

/// A function may run for a day (FC's largest timeout); HAProxy must not cut it, nor a
/// WebSocket that lives as long. A minute more than 86400 s.
const LONGEST_S: u64 = 86_460;

/// One fcsup node: `NAME=HOST:PORT`, its `--node-name` and `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name (HAProxy's server name, and `X-Fcsup-Node` on its answers).
    pub name: String,
    /// `HOST:PORT` of its front door.
    pub addr: String,
}

/// Why a configuration cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrontError {
    /// `--node` is not `NAME=HOST:PORT`.
    #[error("node {0:?} is not NAME=HOST:PORT")]
    NodeSyntax(String),
    /// A name HAProxy's syntax (or a header) would not take as is.
    #[error("node name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    NodeName(String),
    /// Not `HOST:PORT`.
    #[error("{0:?} is not HOST:PORT (an IPv4 address, [IPv6] address or DNS name, and a port 1-65535)")]
    Address(String),
    /// Two nodes share a name or an address.
    #[error("node {0:?} is given twice")]
    Duplicate(String),
    /// No node.
    #[error("no node given")]
    NoNodes,
    /// Two node names hash to the same HAProxy server id.
    #[error("nodes {0:?} and {1:?} get the same server id: rename one")]
    IdClash(String, String),
    /// A setting out of range.
    #[error("{0}")]
    Setting(&'static str),
}

impl FromStr for Node {
    type Err = FrontError;

    fn from_str(s: &str) -> Result<Node, FrontError> {
        let (name, addr) = s.split_once('=').ok_or_else(|| FrontError::NodeSyntax(s.into()))?;
        let ok_name = (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok_name {
            return Err(FrontError::NodeName(name.into()));
        }
        check_address(addr, false)?;
        Ok(Node { name: name.into(), addr: addr.into() })
    }
}

/// Checks `HOST:PORT`; `any_host` also takes `:PORT` (a `bind` on every address).
fn check_address(addr: &str, any_host: bool) -> Result<(), FrontError> {
    let bad = || FrontError::Address(addr.into());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if !port.bytes().all(|b| b.is_ascii_digit()) || !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(bad());
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else if host.is_empty() {
        any_host
    } else {
        host.len() <= 253
            && host.split('.').all(|l| {
                (1..=63).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-') && !l.ends_with('-')
            })
    };
    ok.then_some(()).ok_or_else(bad)
}

/// What `fcsup haproxy-config` is given.
#[derive(Debug, Clone)]
pub struct Front {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Where HAProxy listens (`HOST:PORT` or `:PORT`).
    pub listen: String,
    /// `hash-balance-factor`: no node takes more than this percentage of the average in-flight
    /// requests (0: no bound).
    pub hash_balance_factor: u32,
    /// Milliseconds between health checks of a node.
    pub check_inter_ms: u32,
}

/// A stable HAProxy server id from the node's name: consistent hashing places servers by id,
/// so ids from names keep every function's home when nodes are added, removed or reordered
/// (and two HAProxy instances given the same nodes agree).
fn server_id(name: &str) -> u32 {
    // FNV-1a: tiny, stable across versions and machines.
    let h = name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (h & 0x7fff_ffff).max(1)
}

/// The configuration text.
pub fn config(front: &Front) -> Result<String, FrontError> {
    if front.nodes.is_empty() {
        return Err(FrontError::NoNodes);
    }
    check_address(&front.listen, true)?;
    if front.hash_balance_factor != 0 && !(101..=10_000).contains(&front.hash_balance_factor) {
        return Err(FrontError::Setting("--hash-balance-factor is 0 (no bound) or 101 to 10000 (percent of the average load)"));
    }
    if !(10..=3_600_000).contains(&front.check_inter_ms) {
        return Err(FrontError::Setting("--check-inter is 10 to 3600000 ms"));
    }
    let (mut names, mut addrs, mut ids) = (HashSet::new(), HashSet::new(), std::collections::HashMap::new());
    for n in &front.nodes {
        if !names.insert(n.name.as_str()) {
            return Err(FrontError::Duplicate(n.name.clone()));
        }
        if !addrs.insert(n.addr.as_str()) {
            return Err(FrontError::Duplicate(n.addr.clone()));
        }
        if let Some(other) = ids.insert(server_id(&n.name), n.name.as_str()) {
            return Err(FrontError::IdClash(other.into(), n.name.clone()));
        }
    }
    let inter = front.check_inter_ms;
    let fastinter = (inter / 4).max(10);
    // One try per node and one more for a connection that failed on the way.
    let retries = (front.nodes.len() + 1).max(3);
    let factor = match front.hash_balance_factor {
        0 => String::new(),
        f => format!("    hash-balance-factor {f}\n"),
    };
    let mut servers = String::new();
    for n in &front.nodes {
        let _ = writeln!(servers, "    server {} {} id {}", n.name, n.addr, server_id(&n.name));
    }
    Ok(format!(
        "# HAProxy 2.6 configuration for {count} fcsup node(s), written by `fcsup haproxy-config` (fcsup {version}).
# Check it with `haproxy -c -f FILE`; README, \"The front: HAProxy\", explains each line.

defaults
    mode http
    option forwardfor
    timeout connect 3s
    # The request's head; then a client silent for longer than fcsup's --idle-timeout.
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout client 65s
    # A function may run {longest} s before it answers; a WebSocket may live as long.
    timeout server {longest}s
    timeout tunnel {longest}s
    timeout client-fin 30s
    timeout server-fin 30s

frontend fcsup
    bind {listen}
    # Only HAProxy says a request came through it: a client's own header is replaced.
    http-request set-header X-Fcsup-Front haproxy
    # The scheme is HAProxy's to say (nodes started with --trusted-proxy believe it).
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    default_backend fcsup_nodes

backend fcsup_nodes
    # A function's home node: consistent hashing on its name, bounded load. Other paths
    # (/healthz, /metrics) go round the nodes.
    http-request set-var(txn.fcsup_function) path,field(4,/),url_dec if {{ path_beg /2023-03-30/functions/ }}
    http-request set-var(txn.fcsup_function) path,field(3,/),url_dec if {{ path_beg /http/ }}
    balance hash var(txn.fcsup_function)
    hash-type consistent
{factor}    # A body with a length is read before the node is picked (up to one buffer, tune.bufsize),
    # so that it can be sent again; a chunked body streams and is retried only if it was whole.
    http-request wait-for-body time 65s if {{ req.hdr(content-length) -m found }}
    # A node that is full answers 425 at once, having done nothing: try the next node. Also a
    # refused connection (a node stopped). Never a connection closed without an answer nor a
    # response timeout: the request may have run there, and FC runs a Sync request at most once.
    retry-on 425 conn-failure
    retries {retries}
    option redispatch 1
    # Every node full: FC's answer, 429 ResourceExhausted (the body is already FC's).
    http-response set-status 429 if {{ status 425 }} {{ res.hdr(X-Fcsup-Full) -m found }}
    # A function's own 425 comes as 400 marked X-Fcsup-Status (it ran: not to be retried, which
    # is decided before these rules); its status is put back.
    http-response set-status 425 if {{ status 400 }} {{ res.hdr(X-Fcsup-Status) -m str 425 }}
    http-response del-header X-Fcsup-Status
    # /healthz fails while a node drains (after SIGTERM): new requests go elsewhere, its
    # in-flight ones finish (no on-marked-down shutdown-sessions).
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter {inter} fastinter {fastinter} downinter {inter} fall 2 rise 2
{servers}",
        count = front.nodes.len(),
        version = env!("CARGO_PKG_VERSION"),
        longest = LONGEST_S,
        listen = front.listen,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(nodes: &[&str]) -> Front {
        Front {
            nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
            listen: "127.0.0.1:9000".into(),
            hash_balance_factor: 150,
            check_inter_ms: 1000,
        }
    }

    #[test]
    fn nodes_parse_and_hostile_ones_are_refused() {
        assert_eq!("a-1=10.0.0.1:9100".parse::<Node>().unwrap(), Node { name: "a-1".into(), addr: "10.0.0.1:9100".into() });
        "n=[::1]:9100".parse::<Node>().unwrap();
        "n=node-1.example:9100".parse::<Node>().unwrap();
        for bad in [
            "n",
            "=h:1",
            "-n=h:1",
            "n x=h:1",
            "n\n=h:1",
            "n=h",
            "n=h:0",
            "n=h:+1",
            "n=h:65536",
            "n=h x:1",
            "n=h:1\n    server evil 1.2.3.4:1",
            "n=[zz]:1",
            "n=:1",
        ] {
            assert!(bad.parse::<Node>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_has_the_contracts_lines() {
        let c = config(&front(&["a=127.0.0.1:9101", "b=127.0.0.1:9102"])).unwrap();
        for line in [
            "bind 127.0.0.1:9000",
            "balance hash var(txn.fcsup_function)",
            "hash-type consistent",
            "hash-balance-factor 150",
            "retry-on 425 conn-failure\n",
            "option redispatch 1",
            "retries 3",
            "http-request set-header X-Fcsup-Front haproxy",
            "http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
            "option httpchk GET /healthz",
            "http-response set-status 425 if { status 400 } { res.hdr(X-Fcsup-Status) -m str 425 }",
            "timeout server 86460s",
            &format!("server a 127.0.0.1:9101 id {}", server_id("a")),
        ] {
            assert!(c.contains(line), "no {line:?} in\n{c}");
        }
        let directives: String = c.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        assert!(!directives.contains("response-timeout") && !directives.contains("shutdown-sessions"), "{c}");
        let unbounded = Front { hash_balance_factor: 0, ..front(&["a=h:1"]) };
        assert!(!config(&unbounded).unwrap().contains("hash-balance-factor"));
    }

    #[test]
    fn bad_sets_are_refused() {
        assert_eq!(config(&front(&[])), Err(FrontError::NoNodes));
        assert_eq!(config(&front(&["a=h:1", "a=h:2"])), Err(FrontError::Duplicate("a".into())));
        assert_eq!(config(&front(&["a=h:1", "b=h:1"])), Err(FrontError::Duplicate("h:1".into())));
        config(&Front { hash_balance_factor: 100, ..front(&["a=h:1"]) }).unwrap_err();
        config(&Front { check_inter_ms: 0, ..front(&["a=h:1"]) }).unwrap_err();
        config(&Front { listen: "0.0.0.0:9000 ssl".into(), ..front(&["a=h:1"]) }).unwrap_err();
        config(&Front { listen: ":9000".into(), ..front(&["a=h:1"]) }).unwrap();
    }

    #[test]
    fn server_ids_are_stable_and_positive() {
        assert_eq!(server_id("node-1"), server_id("node-1"));
        assert_ne!(server_id("node-1"), server_id("node-2"));
        assert!(server_id("") >= 1);
    }
}
