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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{sys, SYSTEM_DIRS};

/// The skeleton root's mount namespace.
#[derive(Debug)]
pub struct RootTemplate {
    ns: OwnedFd,
}

fn c(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other(format!("{} has a NUL byte", p.display())))
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn mount(src: Option<&str>, dst: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    let cs = |s: Option<&str>| s.map(|s| CString::new(s).expect("no NUL"));
    let (src, fstype, data) = (cs(src), cs(fstype), cs(data));
    let dst_c = c(dst)?;
    // SAFETY: mount(2) with C strings alive for the call.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(r, &format!("mount {}", dst.display()))
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
    // SAFETY: unshare of this thread's mount namespace (implies its own fs_struct).
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare the mount namespace")?;
    let ns = sys::open_ro(c"/proc/thread-self/ns/mnt")?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    mount(Some("tmpfs"), root, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some("mode=755,size=1m"))?;
    for dir in SYSTEM_DIRS {
        let host = Path::new("/").join(dir);
        let Ok(meta) = std::fs::symlink_metadata(&host) else { continue };
        let inside = root.join(dir);
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&host)?, &inside)?;
        } else if meta.is_dir() {
            std::fs::create_dir(&inside)?;
            mount(Some(&host.display().to_string()), &inside, None, libc::MS_BIND | libc::MS_REC, None)?;
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
            mount(None, &inside, None, ro, None)?;
        }
    }
    for (dir, mode) in [("code", 0o755), ("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555), (".oldroot", 0o700)] {
        std::fs::create_dir(root.join(dir))?;
        std::fs::set_permissions(root.join(dir), std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    let (new_root, put_old) = (c(root)?, c(&root.join(".oldroot"))?);
    // SAFETY: pivot_root(2) with valid C strings; this thread alone lives in the namespace.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) as libc::c_int }, "pivot_root")?;
    std::env::set_current_dir("/")?;
    // SAFETY: umount2 of the old root, then it is an empty directory.
    check(unsafe { libc::umount2(c"/.oldroot".as_ptr(), libc::MNT_DETACH) }, "detach the host root")?;
    std::fs::remove_dir("/.oldroot")?;
    mount(None, Path::new("/"), None, libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV, Some("mode=755,size=1m"))?;
    Ok(ns)
}

/// A detached, read-only (nosuid, nodev) copy of the mount tree at `dir`, ready for
/// `move_mount`; `ENOSYS` on kernels before 5.12.
pub fn detached_ro_tree(dir: &Path) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let path = c(dir)?;
    // SAFETY: open_tree(2) with a C string; the result is a new fd or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE)
    };
    check(fd as libc::c_int, &format!("clone the mount of {}", dir.display()))?;
    // SAFETY: a fresh fd owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr { attr_set: 0x1 | 0x2 | 0x4, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr(2) on our detached tree with a mount_attr of the right size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | AT_RECURSIVE as libc::c_int,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r as libc::c_int, "make the code mount read-only")?;
    Ok(tree)
}
