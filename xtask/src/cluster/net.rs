//! The cluster's network: a bridge on the host holding the first address of a private /24,
//! and per node a network namespace joined to the bridge by a veth pair. Everything is made
//! with iproute2 (`ip`), the tool an operator would use to look at it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The cluster subnets are 10.213.<run>.0/24: a corner of 10/8 few hosts route; a run skips
/// any /24 the host already has an address or a route in.
const NET: [u8; 2] = [10, 213];

/// Runs `ip ARGS`, failing with its standard error.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge, the veths and the namespaces of one run.
#[derive(Debug)]
pub struct Net {
    /// The run number: the third octet of the subnet and part of every name.
    pub run: u8,
    /// Namespaces made so far (removed at teardown).
    pub namespaces: Vec<String>,
}

impl Net {
    /// Claims a free run number and makes its bridge. Creating the bridge is the lock: two
    /// runs (parallel tests) cannot both create `fccl<run>`.
    pub fn claim() -> Result<Net> {
        let start = std::process::id() % 250;
        let mut last = None;
        for k in 0..250 {
            let run = u8::try_from(1 + (start + k) % 250).expect("below 251");
            let taken = format!("{}.{}.{run}.", NET[0], NET[1]);
            let used = ip(&["-4", "-o", "addr", "show"])? + &ip(&["-4", "route", "show", "table", "all"])?;
            if used.contains(&taken) {
                continue;
            }
            let bridge = bridge_name(run);
            match ip(&["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    let net = Net { run, namespaces: Vec::new() };
                    ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &bridge])?;
                    ip(&["link", "set", &bridge, "up"])?;
                    return Ok(net);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free subnet in {}.{}.0.0/16", NET[0], NET[1])))
    }

    /// The host's address on the bridge (etcd and HAProxy listen there).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.run, 1)
    }

    /// Node `i`'s address in its namespace.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.run, u8::try_from(10 + i).expect("at most 240 nodes"))
    }

    /// Node `i`'s namespace name (`ip netns` lists it).
    pub fn netns(&self, i: usize) -> String {
        format!("fcsup-cl-{}-{i}", self.run)
    }

    /// Makes node `i`'s namespace and links it to the bridge.
    pub fn add_node(&mut self, i: usize) -> Result<()> {
        let (ns, bridge) = (self.netns(i), bridge_name(self.run));
        let (host_side, node_side) = (format!("{bridge}-{i}"), format!("{bridge}-{i}n"));
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &host_side, "type", "veth", "peer", "name", &node_side, "netns", &ns])?;
        ip(&["link", "set", &host_side, "master", &bridge, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(i)), "dev", &node_side])?;
        ip(&["-n", &ns, "link", "set", &node_side, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Lets only root reach etcd (ports 2379 and 2380 on the host's bridge address) from the
    /// host: whoever can write etcd chooses what code every node runs, and any local user can
    /// reach the bridge address. The nodes' traffic arrives over the bridge (the input hook) and
    /// is not affected. Its own nftables table, deleted at teardown.
    pub fn guard_etcd(&self) -> Result<()> {
        let rules = format!(
            "table inet {t} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
             ip daddr {ip} tcp dport {{ 2379, 2380 }} meta skuid != 0 reject with tcp reset\n  }}\n}}\n",
            t = nft_table(self.run),
            ip = self.host_ip()
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft (nftables)")?;
        std::io::Write::write_all(child.stdin.as_mut().context("nft's stdin")?, rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Kills whatever still runs in the namespaces, deletes them, the veths and the bridge;
    /// returns the pids it had to kill (the caller checks they are gone).
    pub fn teardown(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        for ns in self.namespaces.drain(..) {
            for pid in ip(&["netns", "pids", &ns]).unwrap_or_default().split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                    killed.push(pid.to_string());
                }
            }
            let _ = ip(&["netns", "del", &ns]);
        }
        for link in self.links() {
            let _ = ip(&["link", "del", &link]);
        }
        if has_nft_table(self.run) {
            let _ = Command::new("nft").args(["delete", "table", "inet", &nft_table(self.run)]).output();
        }
        killed
    }

    /// This run's links still on the host (the bridge and host-side veths).
    pub fn links(&self) -> Vec<String> {
        let bridge = bridge_name(self.run);
        let all = ip(&["-o", "link", "show"]).unwrap_or_default();
        all.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| *n == bridge || n.starts_with(&format!("{bridge}-")))
            .collect()
    }
}

/// The names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(d) = std::fs::read_dir(dir) else { return Vec::new() };
    d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(prefix)).collect()
}

/// What of run `run` is left on the host: links, namespaces, cgroup roots (under `cgroup2`),
/// runtime and temporary directories.
pub fn leftovers(run: u8, cgroup2: Option<&Path>) -> Vec<String> {
    let mut left: Vec<String> = Net { run, namespaces: Vec::new() }.links().into_iter().map(|l| format!("link {l}")).collect();
    let prefix = format!("fcsup-cl-{run}-");
    left.extend(named(Path::new("/run/netns"), &prefix).into_iter().map(|n| format!("netns {n}")));
    left.extend(named(Path::new("/run/fcsup"), &prefix).into_iter().map(|n| format!("directory /run/fcsup/{n}")));
    if let Some(cg) = cgroup2 {
        left.extend(named(cg, &prefix).into_iter().map(|n| format!("cgroup {}/{n}", cg.display())));
    }
    if has_nft_table(run) {
        left.push(format!("nftables table inet {}", nft_table(run)));
    }
    let tmp = std::env::temp_dir();
    left.extend(named(&tmp, &format!("fcsup-cluster-{run}-")).into_iter().map(|n| format!("directory {}/{n}", tmp.display())));
    left
}

/// The nftables table of run `run`.
fn nft_table(run: u8) -> String {
    format!("fcsup_cl_{run}")
}

/// Whether run `run`'s nftables table exists.
fn has_nft_table(run: u8) -> bool {
    Command::new("nft").args(["list", "table", "inet", &nft_table(run)]).output().is_ok_and(|o| o.status.success())
}

/// The bridge of run `run`.
pub fn bridge_name(run: u8) -> String {
    format!("fccl{run}")
}
