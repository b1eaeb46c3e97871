//! `code: ./code.zip` (or a `.jar`): FC unpacks an uploaded package into `/code`; fcsup unpacks
//! it once into a cache directory named by the package's SHA-256, and the function runs from
//! there as if `code` had named that directory.
//!
//! The package is untrusted input read by root, so an entry that would land outside its
//! directory (`..`, an absolute path), a symlink, or a package larger than [`MAX_BYTES`]
//! unpacked or with more than [`MAX_ENTRIES`] entries is refused with the entry named; sizes are
//! counted as bytes are written, not taken from the (forgeable) headers.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where packages are unpacked unless the file's `fcsup.codeCache` says otherwise; next to the
/// image cache ([`crate::image::DEFAULT_DIR`]).
pub const DEFAULT_DIR: &str = "/var/lib/fcsup/code";

/// The most bytes a package may unpack to: far above what an honest package of FC's largest
/// code size unpacks to, far below what would fill the disk (fcsup keeps a copy per version).
pub const MAX_BYTES: u64 = 2 << 30;

/// The largest package read (FC's largest code package is 500 MB).
pub const MAX_PACKAGE_BYTES: u64 = 512 << 20;

/// The most entries a package may have.
pub const MAX_ENTRIES: usize = 100_000;

/// Whether `code` names a package rather than a directory.
pub fn is_package(code: &Path) -> bool {
    code.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("zip") || e.eq_ignore_ascii_case("jar"))
}

/// The directory `archive` is unpacked in under `cache`, unpacking it first if no earlier run
/// did. The cache directory is made 0700.
pub fn unpack(archive: &Path, cache: &Path) -> Result<PathBuf, String> {
    unpack_with(archive, cache, MAX_BYTES, MAX_ENTRIES)
}

fn unpack_with(archive: &Path, cache: &Path, max_bytes: u64, max_entries: usize) -> Result<PathBuf, String> {
    let bytes = read_package(archive)?;
    let sum = hex::encode(Sha256::digest(&bytes));
    let dir = cache.join(&sum);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(cache).map_err(|e| format!("cannot create the code cache {}: {e}", cache.display()))?;
    // Before anything in it is used: a cache another user could change is another user's code.
    check_private(cache)?;
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == nix::unistd::geteuid().as_raw() => return Ok(dir),
        Ok(_) => return Err(format!("{} is not a directory fcsup unpacked: remove it", dir.display())),
        Err(_) => {}
    }
    // Only root reads unpacked code: instances get it through their own mounts.
    fs::set_permissions(cache, fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", cache.display()))?;
    // Unpacked beside its final name and renamed into place, so that a crash or a concurrent
    // start never leaves a half-unpacked directory under the checksum.
    let tmp = cache.join(format!(".{sum}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::DirBuilder::new().mode(0o755).create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    match extract(&bytes, &tmp, max_bytes, max_entries) {
        Ok(()) => {}
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(format!("{}: {e}", archive.display()));
        }
    }
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another fcsup got there first: the same bytes, so the same tree.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(format!("cannot move the unpacked code to {}: {e}", dir.display()))
        }
    }
}

/// Refuses a cache another user could change (its files become instances' `/code`), as the
/// image cache does: a real directory owned by the user fcsup runs as, under directories owned
/// by that user or root and writable by nobody else (sticky ones like /tmp excepted).
/// Reads a package as root reads it for the function: only a regular file (not a FIFO, a
/// device or a symlink to one, which would hang or flood fcsup), at most
/// [`MAX_PACKAGE_BYTES`], and only one that any user could read anyway (readable by others, in
/// directories others may enter), as a code directory must be for its instances to read it:
/// whoever names the package (the file, etcd, the admin API) must not get root's eyes on a
/// private file.
fn read_package(archive: &Path) -> Result<Vec<u8>, String> {
    let named = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", archive.display());
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(archive).map_err(|e| named(&e))?;
    let meta = file.metadata().map_err(|e| named(&e))?;
    if !meta.is_file() {
        return Err(named(&"not a regular file"));
    }
    if meta.len() > MAX_PACKAGE_BYTES {
        return Err(named(&format_args!("{} bytes, more than the {MAX_PACKAGE_BYTES} a package may have", meta.len())));
    }
    if meta.permissions().mode() & 0o004 == 0 {
        return Err(named(&"not readable by other users (a code package must be as readable as a code directory)"));
    }
    let abs = std::path::absolute(archive).map_err(|e| named(&e))?;
    for dir in abs.ancestors().skip(1) {
        if fs::metadata(dir).map_err(|e| named(&e))?.permissions().mode() & 0o001 == 0 {
            return Err(named(&format_args!("other users cannot enter {} (a code package must be as readable as a code directory)", dir.display())));
        }
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_PACKAGE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| named(&e))?;
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(named(&"it grew past the limit while read"));
    }
    Ok(bytes)
}

fn check_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| format!("cannot use {} as the code cache: {why}", dir.display());
    let meta = fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(refuse("it is not a directory (a symlink is refused)".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!("it is owned by uid {}, not {me}", meta.uid())));
    }
    let absolute = fs::canonicalize(dir).map_err(|e| refuse(e.to_string()))?;
    for parent in absolute.ancestors().skip(1) {
        let m = fs::metadata(parent).map_err(|e| refuse(format!("{}: {e}", parent.display())))?;
        if (m.uid() != me && m.uid() != 0) || (m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0) {
            return Err(refuse(format!("{} could be changed by another user", parent.display())));
        }
    }
    Ok(())
}

fn extract(bytes: &[u8], into: &Path, max_bytes: u64, max_entries: usize) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a zip (or jar) file: {e}"))?;
    if zip.len() > max_entries {
        return Err(format!("{} entries; fcsup unpacks at most {max_entries}", zip.len()));
    }
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        let name = entry.name().to_string();
        if entry.is_symlink() {
            return Err(format!("entry {name:?} is a symbolic link; fcsup refuses links in code packages"));
        }
        let Some(rel) = entry.enclosed_name().filter(|p| !name.starts_with('/') && (!p.as_os_str().is_empty() || entry.is_dir())) else {
            return Err(format!("entry {name:?} would be written outside the code directory (an absolute path or '..')"));
        };
        let path = into.join(&rel);
        if entry.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(&path).map_err(|e| format!("{name}: {e}"))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| format!("{name}: {e}"))?;
        }
        // Keep the owner's execute bit (bootstrap scripts); nothing setuid, nothing writable by others.
        let mode = entry.unix_mode().map_or(0o644, |m| if m & 0o100 != 0 { 0o755 } else { 0o644 });
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("{name}: {e}"))?;
        let left = max_bytes - total;
        let written = std::io::copy(&mut (&mut entry).take(left + 1), &mut out).map_err(|e| format!("{name}: {e}"))?;
        total += written;
        if total > max_bytes {
            return Err(format!("unpacks to more than {max_bytes} bytes; fcsup refuses it (a zip bomb?)"));
        }
        out.flush().map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            if name.ends_with('/') {
                w.add_directory(*name, SimpleFileOptions::default()).unwrap();
            } else {
                let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).unix_permissions(0o755);
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// A directory other users may enter, as a package's must be.
    fn open_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn only_a_regular_file_anyone_could_read_is_read_as_a_package() {
        let dir = open_tempdir();
        let cache = dir.path().join("cache");
        let fifo = dir.path().join("fifo.zip");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = unpack(&fifo, &cache).unwrap_err();
        assert!(e.contains("not a regular file"), "a FIFO (it would hang the reader): {e}");
        let link = dir.path().join("zero.zip");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(unpack(&link, &cache).is_err(), "a symlink is not followed");
        let private = dir.path().join("private.zip");
        fs::write(&private, zip_of(&[("secret", b"root only")])).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        let e = unpack(&private, &cache).unwrap_err();
        assert!(e.contains("not readable by other users"), "{e}");
        let closed = dir.path().join("closed");
        fs::DirBuilder::new().mode(0o700).create(&closed).unwrap();
        fs::write(closed.join("in.zip"), zip_of(&[("secret", b"root only")])).unwrap();
        let e = unpack(&closed.join("in.zip"), &cache).unwrap_err();
        assert!(e.contains("cannot enter"), "{e}");
        assert!(!cache.exists() || fs::read_dir(&cache).unwrap().next().is_none(), "nothing unpacked");
    }

    #[test]
    fn a_package_unpacks_once_by_checksum() {
        let dir = open_tempdir();
        let archive = dir.path().join("code.jar");
        fs::write(&archive, zip_of(&[("bin/", b""), ("bin/bootstrap", b"#!/bin/sh\n"), ("index.py", b"x = 1\n")])).unwrap();
        let cache = dir.path().join("cache");
        let out = unpack(&archive, &cache).unwrap();
        assert_eq!(fs::read(out.join("index.py")).unwrap(), b"x = 1\n");
        assert_eq!(fs::metadata(out.join("bin/bootstrap")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
        fs::write(out.join("marker"), b"").unwrap();
        assert_eq!(unpack(&archive, &cache).unwrap(), out, "the same bytes: the same directory, not unpacked again");
        assert!(out.join("marker").exists());
        fs::write(&archive, zip_of(&[("index.py", b"x = 2\n")])).unwrap();
        assert_ne!(unpack(&archive, &cache).unwrap(), out, "new bytes: a new directory");
        assert!(is_package(Path::new("a/b.ZIP")) && is_package(&archive) && !is_package(Path::new("code")));
        std::fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = unpack(&archive, &dir.path().join("open")).unwrap_err();
        assert!(e.contains("could be changed by another user"), "a cache under a world-writable directory: {e}");
    }

    #[test]
    fn hostile_packages_are_refused() {
        let dir = open_tempdir();
        let cache = dir.path().join("cache");
        let try_zip = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            unpack_with(&p, &cache, 1000, 3)
        };
        let e = try_zip("dots.zip", zip_of(&[("../evil", b"x")])).unwrap_err();
        assert!(e.contains("outside the code directory"), "{e}");
        // The writer strips a leading '/': put it back in the raw bytes (names are not checksummed).
        let raw = zip_of(&[("_etc/evil", b"x")]);
        let needle = b"_etc/evil";
        let mut abs = raw.clone();
        for i in 0..raw.len() - needle.len() {
            if &raw[i..i + needle.len()] == needle {
                abs[i] = b'/';
            }
        }
        let e = try_zip("abs.zip", abs).unwrap_err();
        assert!(e.contains("outside the code directory"), "{e}");
        let e = try_zip("big.zip", zip_of(&[("a", &[0u8; 600]), ("b", &[0u8; 600])])).unwrap_err();
        assert!(e.contains("more than 1000 bytes"), "{e}");
        let e = try_zip("many.zip", zip_of(&[("a", b""), ("b", b""), ("c", b""), ("d", b"")])).unwrap_err();
        assert!(e.contains("4 entries"), "{e}");
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default()).unwrap();
        let e = try_zip("link.zip", w.finish().unwrap().into_inner()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = try_zip("junk.zip", b"not a zip".to_vec()).unwrap_err();
        assert!(e.contains("not a zip"), "{e}");
        assert!(!dir.path().join("evil").exists());
        let left: Vec<_> = fs::read_dir(&cache).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "nothing half-unpacked stays: {left:?}");
    }
}
