//! What the host holds, counted from /proc and /sys before and after a soak: processes,
//! cgroups, mounts, network namespaces; and fcsup's own RSS and fds while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Everything counted at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every pid in /proc (host-wide; other work on the host moves it).
    pub pids_total: usize,
    /// Pids whose cgroup (any hierarchy) is under the soak's cgroup root.
    pub pids_in_root: Vec<u32>,
    /// Pids running the soak's copy of the fixture (by `comm`).
    pub fixture_pids: Vec<u32>,
    /// Cgroup directories under the soak root on cgroup2.
    pub cgroups_v2: usize,
    /// Same on each v1 hierarchy (by its controllers).
    pub cgroups_v1: BTreeMap<String, usize>,
    /// Lines of /proc/self/mountinfo (host-wide).
    pub mount_lines: usize,
    /// Mounts whose root, mount point or source mention `fcsup`.
    pub mounts_fcsup: usize,
    /// Distinct network namespaces held by processes (host-wide).
    pub netns_distinct: usize,
    /// Entries in /run/netns.
    pub run_netns: usize,
    /// Of the namespaces fcsup was seen holding, those something still holds.
    pub netns_still_held: Vec<u64>,
    /// fcsup's runtime directory `/run/fcsup/<root>` exists.
    pub run_dir: bool,
}

/// The inode of an `ns` link target such as `net:[4026531993]`.
fn ns_inode(link: &Path, kind: &str) -> Option<u64> {
    let t = fs::read_link(link).ok()?;
    let t = t.to_str()?;
    t.strip_prefix(kind)?.strip_prefix(":[")?.strip_suffix(']')?.parse().ok()
}

fn pids() -> Vec<u32> {
    procfs::process::all_processes().map(|all| all.flatten().filter_map(|p| u32::try_from(p.pid).ok()).collect()).unwrap_or_default()
}

/// The cgroup mounts from /proc/self/mountinfo: cgroup2's, and each v1 hierarchy's by name.
pub fn cgroup_mounts() -> (Option<PathBuf>, BTreeMap<String, PathBuf>) {
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).map(|m| m.0).unwrap_or_default();
    let (mut v2, mut v1) = (None, BTreeMap::new());
    for m in mounts {
        match m.fs_type.as_str() {
            "cgroup2" => v2 = v2.or(Some(m.mount_point)),
            "cgroup" => {
                let mut name: Vec<String> = m
                    .super_options
                    .iter()
                    .filter(|(k, v)| (v.is_none() && !matches!(k.as_str(), "rw" | "ro")) || k.as_str() == "name")
                    .map(|(k, v)| v.as_ref().map_or_else(|| k.clone(), |v| format!("{k}={v}")))
                    .collect();
                name.sort();
                v1.entry(name.join(",")).or_insert(m.mount_point);
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// Directories at or below any directory named `root` under `dir` (depth-limited).
fn count_under(dir: &Path, root: &str, inside: bool, depth: usize) -> usize {
    let mut n = usize::from(inside);
    if depth == 0 {
        return n;
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let hit = inside || e.file_name().to_str() == Some(root);
            n += count_under(&e.path(), root, hit, depth - 1);
        }
    }
    n
}

/// Counts everything; `comm` is the fixture's process name, `watched` the network
/// namespaces fcsup held during the run (empty before it).
pub fn snapshot(root: &str, comm: &str, watched: &BTreeSet<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    let mut netns = BTreeSet::new();
    let mut held = BTreeSet::new();
    for pid in pids() {
        s.pids_total += 1;
        let p = PathBuf::from(format!("/proc/{pid}"));
        let cg = fs::read_to_string(p.join("cgroup")).unwrap_or_default();
        if cg.lines().any(|l| l.split(':').nth(2).is_some_and(|path| path.split('/').any(|c| c == root))) {
            s.pids_in_root.push(pid);
        }
        if fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim_end() == comm) {
            s.fixture_pids.push(pid);
        }
        if let Some(ino) = ns_inode(&p.join("ns/net"), "net") {
            netns.insert(ino);
            if watched.contains(&ino) {
                held.insert(ino);
            }
        }
        if !watched.is_empty() {
            for fd in fs::read_dir(p.join("fd")).into_iter().flatten().flatten() {
                if let Some(ino) = ns_inode(&fd.path(), "net").filter(|i| watched.contains(i)) {
                    held.insert(ino);
                }
            }
        }
    }
    s.netns_distinct = netns.len();
    s.run_netns = fs::read_dir("/run/netns").map(|d| d.count()).unwrap_or(0);
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mi.lines() {
        s.mount_lines += 1;
        let f: Vec<&str> = l.split(' ').collect();
        let source = l.split_once(" - ").and_then(|(_, p)| p.split(' ').nth(1)).unwrap_or("");
        if [f.get(3).copied().unwrap_or(""), f.get(4).copied().unwrap_or(""), source].iter().any(|x| x.contains("fcsup")) {
            s.mounts_fcsup += 1;
        }
        // An nsfs bind mount keeps a namespace alive with no process in it.
        if let Some(ino) = f.get(3).and_then(|r| r.strip_prefix("net:[")).and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok()) {
            if watched.contains(&ino) {
                held.insert(ino);
            }
        }
    }
    s.netns_still_held = held.into_iter().collect();
    let (v2, v1) = cgroup_mounts();
    if let Some(v2) = v2 {
        // fcsup's root sits right under the cgroup2 mount.
        s.cgroups_v2 = if v2.join(root).is_dir() { count_under(&v2.join(root), root, true, 8) } else { 0 };
    }
    for (name, point) in v1 {
        s.cgroups_v1.insert(name, count_under(&point, root, false, 10));
    }
    s.run_dir = Path::new("/run/fcsup").join(root).exists();
    s
}

/// `VmRSS` of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?.vmrss
}

/// The network namespace this process (and fcsup, which keeps an fd to it) runs in.
pub fn own_netns() -> Option<u64> {
    ns_inode(Path::new("/proc/self/ns/net"), "net")
}

/// Open fds of `pid`, and the network namespaces among them.
pub fn fds(pid: u32) -> (usize, Vec<u64>) {
    let mut n = 0;
    let mut ns = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        n += 1;
        if let Some(i) = ns_inode(&e.path(), "net") {
            ns.push(i);
        }
    }
    (n, ns)
}
