//! One layer unpacked into a directory of its own, ready to be an overlayfs lower directory.
//!
//! OCI whiteouts become overlayfs's: `.wh.NAME` a character device 0:0 named NAME,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. A hostile layer cannot
//! write outside its directory: absolute paths are taken relative to it, `..` is refused, and
//! no path is followed through a symlink (a parent that is a symlink refuses the entry; an
//! entry replacing a symlink removes the link first, so nothing is written through it).
//! Files keep the layer's uids and gids, permissions (setuid bits too) and mtimes; xattrs in
//! the layer are not applied.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// How the layer blob is compressed.
#[derive(Debug, Clone, Copy)]
pub enum Compression {
    /// Decided from the first bytes (plain tar or gzip).
    Sniff,
    /// gzip.
    Gzip,
}

/// What one layer may unpack to. A registry is not trusted, and a small gzip blob can expand a
/// thousandfold onto the host's disk; FC's own limit is on the compressed image (10 GB).
#[derive(Debug, Clone, Copy)]
pub struct LayerLimits {
    /// Bytes of file data.
    pub bytes: u64,
    /// Entries (files, directories, links…).
    pub entries: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        LayerLimits { bytes: 32 << 30, entries: 1_000_000 }
    }
}

/// Unpacks the layer `blob` into `dest` (which must not exist), within `limits`.
pub fn unpack(blob: &Path, compression: Compression, dest: &Path, limits: LayerLimits) -> Result<(), String> {
    let mut file = File::open(blob).map_err(|e| format!("open {}: {e}", blob.display()))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| format!("read {}: {e}", blob.display()))?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let reader = BufReader::with_capacity(1 << 20, head.chain(file));
    let gzip = matches!(compression, Compression::Gzip) || magic[..2] == [0x1f, 0x8b];
    if !gzip && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err("zstd-compressed layers are not supported (tar and tar+gzip are)".into());
    }
    let stream: Box<dyn Read> = if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    fs::create_dir(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in archive.entries().map_err(|e| format!("read the layer: {e}"))? {
        let entry = entry.map_err(|e| format!("read the layer: {e}"))?;
        // Counted from the headers, before anything is written.
        bytes = bytes.saturating_add(entry.size());
        entries += 1;
        if bytes > limits.bytes {
            return Err(format!("it unpacks to more than {} MiB, the limit for one layer", limits.bytes >> 20));
        }
        if entries > limits.entries {
            return Err(format!("it has more than {} entries, the limit for one layer", limits.entries));
        }
        unpack_entry(entry, dest)?;
    }
    Ok(())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The normal components of an entry's path; `..` is refused, `/` and `.` dropped.
fn clean(path: &Path) -> Result<Vec<OsString>, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(format!("entry {} leaves the layer (..)", path.display())),
        }
    }
    Ok(parts)
}

/// `dest/parts…` with every directory on the way created (mode 0755) or checked to be a real
/// directory: a symlink or a file on the way refuses the entry.
fn walk(dest: &Path, parts: &[OsString], create: bool, entry: &Path) -> Result<PathBuf, String> {
    let mut p = dest.to_path_buf();
    for part in parts {
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err(format!("entry {} goes through the symlink {}", entry.display(), rel(dest, &p))),
            Ok(_) => return Err(format!("entry {} goes through {}, which is not a directory", entry.display(), rel(dest, &p))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(|e| format!("create {}: {e}", rel(dest, &p)))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", rel(dest, &p)))?;
            }
            Err(e) => return Err(format!("entry {}: {}: {e}", entry.display(), rel(dest, &p))),
        }
    }
    Ok(p)
}

fn rel(dest: &Path, p: &Path) -> String {
    p.strip_prefix(dest).unwrap_or(p).display().to_string()
}

/// Removes whatever is at `path` (not following a symlink there).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn unpack_entry<R: Read>(mut entry: tar::Entry<R>, dest: &Path) -> Result<(), String> {
    let raw = entry.path().map_err(|e| format!("entry path: {e}"))?.into_owned();
    let parts = clean(&raw)?;
    let Some((name, parents)) = parts.split_last() else {
        // The layer's root directory itself: the store's mode stands.
        return Ok(());
    };
    let parent = walk(dest, parents, true, &raw)?;
    let name_bytes = name.as_bytes();
    if name_bytes == b".wh..wh..opq" {
        xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(|e| format!("mark {} opaque: {e}", rel(dest, &parent)))?;
        return Ok(());
    }
    if name_bytes.starts_with(b".wh..wh.") {
        return Ok(());
    }
    let path = parent.join(name);
    if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
        // The hidden name is one ordinary entry of this directory: `.wh.` alone, `.wh..` or
        // `.wh...` would reach the directory itself or the one above the layer.
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(format!("the whiteout {} names no entry", rel(dest, &path)));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        remove_any(&target).map_err(|e| format!("replace {}: {e}", rel(dest, &target)))?;
        nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .map_err(|e| format!("create the whiteout {}: {e}", rel(dest, &target)))?;
        return Ok(());
    }
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| format!("entry {}: mode: {e}", raw.display()))? & 0o7777;
    let uid = header.uid().map_err(|e| format!("entry {}: uid: {e}", raw.display()))?;
    let gid = header.gid().map_err(|e| format!("entry {}: gid: {e}", raw.display()))?;
    // An existing entry of the same name goes first (a directory stays for a directory), so
    // nothing is ever written through a symlink the layer made.
    let existing_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    if !(kind.is_dir() && existing_dir) {
        remove_any(&path).map_err(|e| format!("replace {}: {e}", rel(dest, &path)))?;
    }
    match kind {
        tar::EntryType::Directory => {
            if !existing_dir {
                fs::create_dir(&path).map_err(|e| format!("create {}: {e}", rel(dest, &path)))?;
            }
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| format!("entry {}: {e}", raw.display()))?
                .ok_or_else(|| format!("symlink {} has no target", raw.display()))?;
            std::os::unix::fs::symlink(&target, &path).map_err(|e| format!("create the symlink {}: {e}", rel(dest, &path)))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(|e| format!("entry {}: {e}", raw.display()))?
                .ok_or_else(|| format!("hard link {} has no target", raw.display()))?;
            let target_parts = clean(&target)?;
            let (tname, tparents) = target_parts.split_last().ok_or_else(|| format!("hard link {} to the layer's root", raw.display()))?;
            let source = walk(dest, tparents, false, &raw)?.join(tname);
            fs::hard_link(&source, &path).map_err(|e| format!("link {} to {}: {e}", rel(dest, &path), target.display()))?;
            return Ok(());
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            entry.unpack(&path).map_err(|e| format!("unpack {}: {e}", rel(dest, &path)))?;
        }
        // PAX and GNU headers are read by the tar crate; nothing else is a file.
        _ => return Ok(()),
    }
    let owner = |id: u64| u32::try_from(id).map_err(|_| format!("entry {}: id {id} out of range", raw.display()));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &path,
        Some(nix::unistd::Uid::from_raw(owner(uid)?)),
        Some(nix::unistd::Gid::from_raw(owner(gid)?)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| format!("chown {}: {e}", rel(dest, &path)))?;
    if !kind.is_symlink() {
        // After chown, which clears setuid and setgid bits.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", rel(dest, &path)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(file.reopen().unwrap());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            if kind.is_symlink() || *kind == tar::EntryType::Link {
                h.set_size(0);
                b.append_link(&mut h, path, data).unwrap();
            } else {
                h.set_size(data.len() as u64);
                // Raw name bytes: the builder would refuse `..` itself.
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.finish().unwrap();
        file
    }

    #[test]
    fn refuses_parent_components() {
        let l = layer(&[("../evil", tar::EntryType::Regular, "x")]);
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(l.path(), Compression::Sniff, &dir.path().join("l"), LayerLimits::default()).unwrap_err();
        assert!(err.contains("leaves the layer"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn refuses_whiteouts_that_name_no_entry() {
        for name in [".wh.", ".wh..", ".wh...", "d/.wh..."] {
            let l = layer(&[("d/keep", tar::EntryType::Regular, "x"), (name, tar::EntryType::Regular, "")]);
            let root = tempfile::tempdir().unwrap();
            std::fs::write(root.path().join("sibling"), "a neighbour of the layer").unwrap();
            let e = unpack(l.path(), Compression::Sniff, &root.path().join("layer"), LayerLimits::default()).unwrap_err();
            assert!(e.contains("names no entry"), "{name}: {e}");
            assert!(root.path().join("sibling").exists(), "{name} removed what lies beside the layer");
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let l = layer(&[("esc", tar::EntryType::Symlink, outside.path().to_str().unwrap()), ("esc/pwned", tar::EntryType::Regular, "x")]);
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(l.path(), Compression::Sniff, &dir.path().join("l"), LayerLimits::default()).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        assert!(!outside.path().join("pwned").exists());
        // A file entry over a symlink replaces the link, not its target.
        let target = outside.path().join("t");
        fs::write(&target, "keep").unwrap();
        let l = layer(&[("ln", tar::EntryType::Symlink, target.to_str().unwrap()), ("ln", tar::EntryType::Regular, "new")]);
        unpack(l.path(), Compression::Sniff, &dir.path().join("l2"), LayerLimits::default()).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(fs::read_to_string(dir.path().join("l2/ln")).unwrap(), "new");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let l = layer(&[
            ("d/", tar::EntryType::Directory, ""),
            ("d/.wh..wh..opq", tar::EntryType::Regular, ""),
            ("/etc/.wh.gone", tar::EntryType::Regular, ""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("l");
        unpack(l.path(), Compression::Sniff, &dest, LayerLimits::default()).unwrap();
        let wh = fs::symlink_metadata(dest.join("etc/gone")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()));
        assert_eq!(std::os::unix::fs::MetadataExt::rdev(&wh), 0);
        assert_eq!(xattr::get(dest.join("d"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
        assert!(!dest.join("d/.wh..wh..opq").exists());
    }

    #[test]
    fn a_layer_that_expands_past_its_limits_is_refused_before_it_is_written() {
        // 8 MiB of zeros: a few KB of gzip.
        let zeros = "\0".repeat(8 << 20);
        let plain = layer(&[("big", tar::EntryType::Regular, &zeros)]);
        let gz = tempfile::NamedTempFile::new().unwrap();
        let mut enc = flate2::write::GzEncoder::new(gz.reopen().unwrap(), flate2::Compression::best());
        io::copy(&mut File::open(plain.path()).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
        assert!(fs::metadata(gz.path()).unwrap().len() < 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let small = LayerLimits { bytes: 1 << 20, entries: 100 };
        let err = unpack(gz.path(), Compression::Sniff, &dir.path().join("l"), small).unwrap_err();
        assert!(err.contains("more than 1 MiB"), "{err}");
        assert!(!dir.path().join("l/big").exists(), "nothing of the entry written");
        let many: Vec<(String, tar::EntryType, &str)> = (0..5).map(|i| (format!("f{i}"), tar::EntryType::Regular, "x")).collect();
        let many: Vec<(&str, tar::EntryType, &str)> = many.iter().map(|(p, k, d)| (p.as_str(), *k, *d)).collect();
        let err = unpack(layer(&many).path(), Compression::Sniff, &dir.path().join("m"), LayerLimits { bytes: 1 << 20, entries: 4 }).unwrap_err();
        assert!(err.contains("more than 4 entries"), "{err}");
    }
}
