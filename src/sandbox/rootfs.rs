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

/// An instance's root from an image's layers: an overlayfs of the layers (each an idmapped
/// mount onto the instance's ids when `userns` is given, so files owned by 0 … 65535 in the
/// image belong to the instance's 0 … 65535) over a private upper directory on a tmpfs of
/// `disk_mb`, as one detached mount ready for `move_mount`. `hosts` and `resolv_conf` are
/// written as the upper's `/etc/hosts` and `/etc/resolv.conf`. Nothing of it appears in the
/// host's mount table; it lives as long as a mount namespace holds it. Needs the new mount
/// API with overlayfs layers given as fds (kernel ≥ 6.13).
pub fn detached_image_root(
    layers: &[std::path::PathBuf],
    disk_mb: u64,
    userns: Option<(&OwnedFd, u32)>,
    etc_files: &[(&str, &[u8])],
) -> io::Result<OwnedFd> {
    use nix::sys::stat::Mode;
    use sys::FsConfig;
    let errno = |what: String| move |e: nix::errno::Errno| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"));
    let tmpfs = sys::fsopen(c"tmpfs").map_err(errno("open a tmpfs context".into()))?;
    let size = CString::new(format!("{disk_mb}m")).expect("no NUL");
    sys::fsconfig(tmpfs.as_fd(), FsConfig::String(c"size", &size)).map_err(errno("size the writable layer".into()))?;
    sys::fsconfig(tmpfs.as_fd(), FsConfig::String(c"mode", c"0755")).map_err(errno("set the writable layer's mode".into()))?;
    sys::fsconfig(tmpfs.as_fd(), FsConfig::Create).map_err(errno("create the writable layer".into()))?;
    let rw = sys::fsmount(tmpfs.as_fd(), 0).map_err(errno("mount the writable layer".into()))?;
    let root_id = userns.map_or(0, |(_, id)| id);
    let owner = (Some(nix::unistd::Uid::from_raw(root_id)), Some(nix::unistd::Gid::from_raw(root_id)));
    for dir in ["upper", "work", "upper/etc"] {
        nix::sys::stat::mkdirat(&rw, dir, Mode::from_bits_retain(0o755)).map_err(errno(format!("create {dir}")))?;
    }
    for dir in ["upper", "upper/etc"] {
        nix::unistd::fchownat(&rw, dir, owner.0, owner.1, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno(format!("chown {dir}")))?;
    }
    for (name, content) in etc_files {
        let path = format!("upper/etc/{name}");
        let flags = nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW;
        let fd = nix::fcntl::openat(&rw, path.as_str(), flags, Mode::from_bits_retain(0o644)).map_err(errno(format!("create {path}")))?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, content)?;
        nix::unistd::fchown(&f, owner.0, owner.1).map_err(errno(format!("chown {path}")))?;
    }
    let dir_flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let upper = nix::fcntl::openat(&rw, "upper", dir_flags, Mode::empty()).map_err(errno("open upper".into()))?;
    let work = nix::fcntl::openat(&rw, "work", dir_flags, Mode::empty()).map_err(errno("open work".into()))?;
    let mut lowers = Vec::with_capacity(layers.len());
    for layer in layers.iter().rev() {
        let tree = sys::open_tree_clone(&c(layer)?).map_err(errno(format!("clone the mount of {}", layer.display())))?;
        if let Some((ns, _)) = userns {
            sys::mount_setattr_idmap(tree.as_fd(), ns.as_fd()).map_err(errno(format!("idmap {}", layer.display())))?;
        }
        lowers.push(tree);
    }
    let ovl = sys::fsopen(c"overlay").map_err(errno("open an overlayfs context".into()))?;
    for tree in &lowers {
        // Top layer first.
        sys::fsconfig(ovl.as_fd(), FsConfig::Fd(c"lowerdir+", tree.as_fd()))
            .map_err(errno("add an image layer (overlayfs takes layers as fds from kernel 6.13)".into()))?;
    }
    sys::fsconfig(ovl.as_fd(), FsConfig::Fd(c"upperdir", upper.as_fd())).map_err(errno("set the writable layer".into()))?;
    sys::fsconfig(ovl.as_fd(), FsConfig::Fd(c"workdir", work.as_fd())).map_err(errno("set overlayfs's work directory".into()))?;
    sys::fsconfig(ovl.as_fd(), FsConfig::Create).map_err(errno("create the image's overlay".into()))?;
    // MOUNT_ATTR_NODEV: device nodes live in the instance's own /dev only.
    sys::fsmount(ovl.as_fd(), 0x4).map_err(errno("mount the image's overlay".into()))
}
