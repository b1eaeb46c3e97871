//! The instances' root filesystem, built once per supervisor.
//!
//! A dedicated thread unshares a mount namespace, builds the skeleton root there (a tmpfs with
//! the host's system directories bound read-only, empty mount points for `/code`, `/tmp`,
//! `/dev` and `/proc`), pivots into it, detaches the host's tree and makes the root read-only.
//! An fd keeps that namespace alive. Each instance then joins it, unshares a private copy of
//! the small skeleton and adds its own mounts: no host mount tree is copied per start, and
//! none is detached (a detach waits for an RCU grace period, milliseconds on an idle VM).
//! The code directory arrives as a detached, read-only mount made in the supervisor with
//! `open_tree` and is attached with `move_mount` (kernel ≥ 5.12; older kernels build the
//! root per instance instead).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::{sys, SYSTEM_DIRS};

/// The skeleton root's mount namespace.
#[derive(Debug)]
pub struct RootTemplate {
    ns: OwnedFd,
}

fn c(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other(format!("{} has a NUL byte", p.display())))
}

/// Names what failed in an errno.
fn check<T>(r: nix::Result<T>, what: &str) -> io::Result<T> {
    r.map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    })
}

fn mount(src: Option<&str>, dst: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> io::Result<()> {
    check(nix::mount::mount(src, dst, fstype, flags, data), &format!("mount {}", dst.display()))
}

impl RootTemplate {
    /// Builds the skeleton under `mountpoint` (an empty directory) in a namespace of its own.
    pub fn build(mountpoint: &Path) -> io::Result<RootTemplate> {
        let root = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("fcsup-rootfs".into())
            .spawn(move || build_on_this_thread(&root))?
            .join()
            .map_err(|_| io::Error::other("the root filesystem builder panicked"))?
            .map(|ns| RootTemplate { ns })
    }

    /// The namespace fd an instance joins.
    pub fn fd(&self) -> RawFd {
        self.ns.as_raw_fd()
    }
}

/// Runs on a thread of its own: unshare gives it a private mount namespace (and fs), which
/// the pivot affects alone.
fn build_on_this_thread(root: &Path) -> io::Result<OwnedFd> {
    // This thread's mount namespace (implies its own fs_struct).
    check(nix::sched::unshare(CloneFlags::CLONE_NEWNS), "unshare the mount namespace")?;
    let ns = check(
        nix::fcntl::open(c"/proc/thread-self/ns/mnt", nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty()),
        "open the new mount namespace",
    )?;
    mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=755,size=1m"))?;
    for dir in SYSTEM_DIRS {
        let host = Path::new("/").join(dir);
        let Ok(meta) = std::fs::symlink_metadata(&host) else { continue };
        let inside = root.join(dir);
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&host)?, &inside)?;
        } else if meta.is_dir() {
            std::fs::create_dir(&inside)?;
            mount(Some(&host.display().to_string()), &inside, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(None, &inside, None, ro, None)?;
        }
    }
    for (dir, mode) in [("code", 0o755), ("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555), (".oldroot", 0o700)] {
        std::fs::create_dir(root.join(dir))?;
        std::fs::set_permissions(root.join(dir), std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    // This thread alone lives in the namespace.
    check(nix::unistd::pivot_root(root, &root.join(".oldroot")), "pivot_root")?;
    std::env::set_current_dir("/")?;
    // The old root, then an empty directory.
    check(nix::mount::umount2("/.oldroot", MntFlags::MNT_DETACH), "detach the host root")?;
    std::fs::remove_dir("/.oldroot")?;
    mount(None, Path::new("/"), None, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=755,size=1m"))?;
    Ok(ns)
}

/// A detached, read-only (nosuid, nodev) copy of the mount tree at `dir`, ready for
/// `move_mount`; `ENOSYS` on kernels before 5.12.
pub fn detached_ro_tree(dir: &Path) -> io::Result<OwnedFd> {
    let tree = check(sys::open_tree_clone(&c(dir)?), &format!("clone the mount of {}", dir.display()))?;
    // MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV (linux/mount.h).
    let ro_nosuid_nodev = 0x1 | 0x2 | 0x4;
    check(sys::mount_setattr_recursive(tree.as_fd(), ro_nosuid_nodev), "make the code mount read-only")?;
    Ok(tree)
}
