//! Finding the cgroup hierarchies from mountinfo: the cgroup2 mount (unified or hybrid) and,
//! on hybrid hosts, the v1 controller mounts that can still enforce memory and pids limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::process::MountInfos;
use procfs::ProcessCGroups;
use procfs::{FromBufRead, FromRead};

use super::{CgroupError, Result};

/// How the host lays out its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only cgroup2 (production hosts: `/sys/fs/cgroup`).
    Unified,
    /// cgroup2 beside v1 controller hierarchies (`/sys/fs/cgroup/unified`).
    Hybrid,
}

/// The host's cgroup mounts.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Where cgroup2 is mounted.
    pub v2: PathBuf,
    /// v1 controller name → its mount point (empty on unified hosts).
    pub v1: BTreeMap<String, PathBuf>,
    /// Unified or hybrid.
    pub mode: Mode,
}

impl Hierarchy {
    /// Reads `mountinfo` (normally `/proc/self/mountinfo`) with `procfs`.
    pub fn discover(mountinfo: &Path) -> Result<Self> {
        let mounts = MountInfos::from_file(mountinfo).map_err(|e| CgroupError::Io {
            op: "read",
            path: mountinfo.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        Self::from_mounts(&mounts).ok_or_else(|| CgroupError::NoCgroup2(mountinfo.to_path_buf()))
    }

    /// Parses mountinfo text; `None` when it has no cgroup2 mount or does not parse.
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_mounts(&MountInfos::from_buf_read(text.as_bytes()).ok()?)
    }

    fn from_mounts(mounts: &MountInfos) -> Option<Self> {
        let mut v2 = None;
        let mut v1 = BTreeMap::new();
        for m in mounts {
            // procfs leaves mountinfo's octal escapes (`\040` for a space) in place.
            let mount_point = || PathBuf::from(unescape(&m.mount_point.to_string_lossy()));
            match m.fs_type.as_str() {
                "cgroup2" if v2.is_none() => v2 = Some(mount_point()),
                "cgroup" => {
                    for ctrl in ["memory", "pids", "cpu", "freezer", "devices", "cpuacct"] {
                        if m.super_options.contains_key(ctrl) {
                            v1.entry(ctrl.to_string()).or_insert_with(mount_point);
                        }
                    }
                }
                _ => {}
            }
        }
        let v2 = v2?;
        let mode = if v1.is_empty() { Mode::Unified } else { Mode::Hybrid };
        Some(Hierarchy { v2, v1, mode })
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The calling process's own path in each v1 hierarchy, from `/proc/self/cgroup`
/// (`4:memory:/a/b` → `memory` → `/a/b`), so v1 groups nest under the supervisor's own.
pub fn own_v1_paths(proc_self_cgroup: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(groups) = ProcessCGroups::from_buf_read(proc_self_cgroup.as_bytes()) else { return out };
    for g in groups {
        for c in g.controllers {
            out.insert(c, g.pathname.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 31 0:41 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
45 31 0:42 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
46 31 0:43 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_finds_unified_and_v1_controllers() {
        let h = Hierarchy::parse(HYBRID).unwrap();
        assert_eq!(h.v2, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(h.mode, Mode::Hybrid);
        assert_eq!(h.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn unified_host() {
        let h = Hierarchy::parse("29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n").unwrap();
        assert_eq!(h.v2, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(h.mode, Mode::Unified);
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert!(Hierarchy::parse("44 31 0:41 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n").is_none());
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        let h = Hierarchy::parse("29 23 0:26 / /srv/cg\\0402 rw shared:4 - cgroup2 cgroup2 rw\n").unwrap();
        assert_eq!(h.v2, PathBuf::from("/srv/cg 2"));
    }

    #[test]
    fn own_paths() {
        let p = own_v1_paths("9:name=systemd:/\n4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/\n");
        assert_eq!(p["memory"], "/process_api/x");
        assert_eq!(p["cpuacct"], "/");
    }
}
