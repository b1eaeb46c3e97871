//! HAProxy in front of the nodes (configured by `fcsup haproxy-config`), and its state read
//! from the stats socket: which servers it takes as up, the moment tests count failures from.

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
