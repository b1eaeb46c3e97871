//! HAProxy in front of the nodes: its configuration, and its state read from the stats
//! socket (which servers it takes as up), the moment tests count failures from.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// What the cluster adds to the front's configuration, in a second file HAProxy reads after
/// it: the stats socket the cluster and its tests read server states from.
pub fn extra_config(socket: &Path) -> String {
    format!("global\n    stats socket {} mode 600 level admin\n", socket.display())
}

/// TODO(front): replaced by `fcsup haproxy-config` once it exists; the minimum the cluster
/// needs meanwhile: hashing by function name, health checks, retries on another node.
pub fn interim_config(listen: &str, nodes: &[(String, String)], check_ms: u64) -> String {
    let mut c = format!(
        "global\n    maxconn 4000\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    timeout check 1s\n    \
         retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response 425\n\
         frontend fcsup\n    bind {listen}\n    default_backend fcsup-nodes\n\
         backend fcsup-nodes\n    balance uri depth 4\n    hash-type consistent\n    option httpchk GET /metrics\n    \
         default-server check inter {check_ms}ms fall 2 rise 2\n"
    );
    for (name, addr) in nodes {
        c += &format!("    server {name} {addr}\n");
    }
    c
}

/// `show stat` on the stats socket: (server name, status) of every server of every backend.
pub fn server_states(socket: &Path) -> Result<Vec<(String, String)>> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("cannot connect to HAProxy's stats socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"show stat\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no {name} column in HAProxy's stats"));
    let (sv, st) = (col("svname")?, col("status")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_string(), f[st].to_string()))
        .collect())
}
