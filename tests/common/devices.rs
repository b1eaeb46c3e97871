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

/// Fake GPUs `gpu0`, `gpu1` in `dir` and a CDI spec of `nvidia.com/gpu` naming `0` in
/// `dir/cdi` (`edits_of_0`: more YAML lines of device 0's `containerEdits`, indented 6
/// spaces); the spec directory.
pub fn fake_gpu_spec(dir: &Path, edits_of_0: &str) -> std::path::PathBuf {
    let major = free_local_major();
    for n in 0u32..2 {
        mknod(&dir.join(format!("gpu{n}")), major, n);
    }
    let cdi = dir.join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    std::fs::write(
        cdi.join("nvidia.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0\"\n    containerEdits:\n      deviceNodes: [{{path: /dev/nvidia0, hostPath: {}/gpu0}}]\n{edits_of_0}",
            dir.display()
        ),
    )
    .unwrap();
    cdi
}
