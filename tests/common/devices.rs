//! Fake devices (notes/gpu.md §6): driverless char nodes of a local-use major.

use std::path::Path;

/// A char major no driver owns: one of the local/experimental 120–127 absent from
/// `/proc/devices`.
pub fn free_local_major() -> u32 {
    let devices = std::fs::read_to_string("/proc/devices").unwrap();
    let chars = devices.split("Block devices:").next().unwrap_or_default();
    let used: Vec<u32> = chars.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    (120..=127).find(|m| !used.contains(m)).expect("a free local-use char major")
}

/// A char node `major`:`minor` at `path`, mode 0666 (as NVIDIA's are; mknod's mode goes
/// through the umask).
pub fn mknod(path: &Path, major: u32, minor: u32) {
    use nix::sys::stat::{makedev, Mode, SFlag};
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major.into(), minor.into())).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
}
