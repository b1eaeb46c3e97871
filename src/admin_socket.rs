//! The admin socket: `/admin/` (which can run code as root) is served on a Unix socket that
//! only root can open — mode 0600, by default inside the supervisor's 0700 runtime directory —
//! instead of on a TCP port that every local user can reach.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The socket's name inside the runtime directory.
pub const FILE_NAME: &str = "admin.sock";

/// The runtime directory of a supervisor with cgroup root `cgroup_root` under `run_base`.
pub fn run_dir(run_base: &Path, cgroup_root: &str) -> PathBuf {
    run_base.join(cgroup_root.trim_matches('/').replace('/', "_"))
}

/// Where `fcsup serve --cgroup-root NAME` listens for admin requests by default.
pub fn default_path(cgroup_root: &str) -> PathBuf {
    run_dir(Path::new("/run/fcsup"), cgroup_root).join(FILE_NAME)
}

/// Makes `dir` private: a directory (not a link) owned by us, mode 0700.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let m = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.is_dir() || m.uid() != me {
        let why = format!("{} is not a directory owned by uid {me}", dir.display());
        return Err(std::io::Error::new(ErrorKind::PermissionDenied, why));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds the socket with mode 0600. A stale socket (nobody accepts on it: a crashed run) is
/// replaced; a live one, or anything that is not a socket, is an error.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    // In a directory another user may change, that user could move the socket away and bind
    // their own at its path, answering the operator's `fcsup ps`/`report` with anything.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let m = std::fs::metadata(dir)?;
    let sticky = m.permissions().mode() & 0o1000 != 0;
    if std::os::unix::fs::MetadataExt::uid(&m) != nix::unistd::geteuid().as_raw() || (m.permissions().mode() & 0o022 != 0 && !sticky) {
        let why =
            format!("{} could be changed by another user (it must be fcsup's user's and not group- or world-writable, or sticky)", dir.display());
        return Err(std::io::Error::new(ErrorKind::PermissionDenied, why));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                let why = format!("{} is in use by a running fcsup", path.display());
                return Err(std::io::Error::new(ErrorKind::AddrInUse, why));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            let why = format!("{} exists and is not a socket", path.display());
            return Err(std::io::Error::new(ErrorKind::AlreadyExists, why));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The socket is created 0600 (no moment at which another user could connect); umask is
    // per process, and this runs at start before anything else creates files.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_retain(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes the socket if it is still one.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_bound_only_where_no_other_user_can_swap_it() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&open.join("admin.sock")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        // Sticky (as /tmp): others cannot move what fcsup's user made there.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let sticky = bind(&open.join("admin.sock")).unwrap();
        drop(sticky);
        let listener = bind(&dir.path().join("admin.sock")).unwrap();
        assert!(std::fs::metadata(dir.path().join("admin.sock")).unwrap().permissions().mode() & 0o777 == 0o600);
        drop(listener);
    }
}
