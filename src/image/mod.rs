//! OCI images: a content-addressed store of blobs and unpacked layers, local sources (an OCI
//! image layout directory, a `docker save` archive), and the image's config as an instance
//! starts from it.
//!
//! The store lives under one directory (default [`DEFAULT_DIR`]):
//! `blobs/sha256/<hex>` holds every blob, written through a [`BlobWriter`] that hashes while it
//! writes and renames into place only when digest and size match; `layers/sha256/<hex>/` holds
//! each layer unpacked once (keyed by the layer blob's digest), used read-only as an overlayfs
//! lower directory; `images.json` maps the references a user gave to manifest digests. Files
//! in layers keep the image's own uids and gids; the store's directory is private to root (mode
//! 0700), and each instance sees the layers through an idmapped mount onto its own id range.

mod local;
pub mod registry;
mod unpack;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

pub use local::import;

/// Where the store lives unless `--image-cache` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/fcsup/images";

/// Errors of the image store and its sources; each names the image, blob or layer at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A blob's content does not match the digest that names it.
    #[error("blob {digest} is corrupt: its content has digest {actual}")]
    DigestMismatch {
        /// The digest the blob was expected to have.
        digest: String,
        /// The digest of what was read.
        actual: String,
    },
    /// A blob's size does not match what its descriptor says (truncated or padded).
    #[error("blob {digest} is corrupt: {actual} bytes where {expected} were expected")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("unsupported digest {0:?}: fcsup takes sha256 digests only")]
    BadDigest(String),
    /// A blob the image needs is not in the store.
    #[error("blob {0} is not in the image cache")]
    MissingBlob(String),
    /// A manifest, index or config that does not parse.
    #[error("{what} is not valid: {message}")]
    Invalid {
        /// What was being read.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A layer that may not be unpacked (a path outside its directory, a format fcsup lacks).
    #[error("layer {digest} refused: {message}")]
    Layer {
        /// The layer blob's digest.
        digest: String,
        /// Why.
        message: String,
    },
    /// An image source fcsup cannot read (unknown transport, tag not found, ...).
    #[error("image {reference}: {message}")]
    Source {
        /// The reference as the user wrote it.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A running `fcsup serve` uses the store: its instances' roots are its layers.
    #[error(
        "the image cache {0} is in use by a running fcsup serve (its instances run from these layers); remove images while nothing serves from it"
    )]
    InUse(String),
    /// A file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was attempted, with the path.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let op = op.into();
    move |source| ImageError::Io { op, source }
}

/// The 64 hex digits of a `sha256:` digest.
fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(hex),
        _ => Err(ImageError::BadDigest(digest.to_string())),
    }
}

/// The process (what to run, as whom, where, with what environment) an image describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Env` as `KEY=value` strings, in the image's order.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (`uid`, `uid:gid`, `name`, `name:group`; empty: root).
    pub user: String,
}

/// An image ready to run: its layers unpacked in the store and its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Digest of the manifest the image was committed from.
    pub manifest_digest: String,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The image's config.
    pub config: ImageConfig,
}

impl Image {
    /// The uid and gid of the image's `User` (`uid`, `uid:gid`, `name`, `name:group`, names
    /// looked up in the image's own `/etc/passwd` and `/etc/group`, as runc does); root when
    /// empty. A numeric uid without a group takes its passwd entry's group, else 0.
    pub fn user_ids(&self) -> Result<(u32, u32), ImageError> {
        let spec = self.config.user.trim();
        if spec.is_empty() {
            return Ok((0, 0));
        }
        let bad = |message: String| ImageError::Invalid { what: format!("the image's User {spec:?}"), message };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = self.file("etc/passwd").unwrap_or_default();
        // name:x:uid:gid:...
        let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && (f[0] == user || f[2] == user));
        let uid = match user.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => entry.as_ref().and_then(|f| f[2].parse().ok()).ok_or_else(|| bad(format!("no user {user:?} in the image's /etc/passwd")))?,
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let groups = self.file("etc/group").unwrap_or_default();
                    groups
                        .lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() > 2 && f[0] == g)
                        .and_then(|f| f[2].parse().ok())
                        .ok_or_else(|| bad(format!("no group {g:?} in the image's /etc/group")))?
                }
            },
            None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
        };
        // An instance's user namespace maps 0 … 65535 (sandbox::IDS_PER_INSTANCE).
        if uid > 65535 || gid > 65535 {
            return Err(bad("ids above 65535 are outside the instance's user namespace".into()));
        }
        Ok((uid, gid))
    }

    /// A regular file of the image (the topmost layer that has the path decides; a whiteout
    /// or anything but a regular file there means none).
    /// The path is looked up without following symlinks on the host: a directory on the way
    /// that is a symlink in the image (say `etc -> /etc`) makes the file absent rather than
    /// reading the host's; files past 1 MiB are not read.
    fn file(&self, rel: &str) -> Option<String> {
        use std::io::Read;
        for layer in self.layers.iter().rev() {
            let p = layer.join(rel);
            let mut dir = layer.clone();
            for part in Path::new(rel).parent().into_iter().flat_map(Path::components) {
                dir.push(part);
                if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
                    return None;
                }
            }
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => {
                    let mut text = String::new();
                    fs::File::open(&p).ok()?.take(1 << 20).read_to_string(&mut text).ok()?;
                    return Some(text);
                }
                Ok(_) => return None,
                Err(_) => {}
            }
        }
        None
    }
}

/// The images of the functions one supervisor serves: the store opened on first need (a
/// supervisor without containers never creates it), each reference resolved once (imported
/// from its local source if it is not in the store) and kept. A failed import is tried again
/// at the next start; a failed registry pull is not (it may take minutes, and instance starts
/// hold their pool): its error answers at once until fcsup restarts.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    store: Mutex<Option<std::sync::Arc<Store>>>,
    resolved: Mutex<BTreeMap<String, std::sync::Arc<Image>>>,
    failed_pulls: Mutex<BTreeMap<String, String>>,
    registry: registry::RegistryOptions,
}

impl Images {
    /// Images kept in a store under `dir`, pulled with `registry`'s credentials and insecure
    /// registries.
    pub fn new(dir: impl Into<PathBuf>, registry: registry::RegistryOptions) -> Images {
        Images { dir: dir.into(), store: Mutex::default(), resolved: Mutex::default(), failed_pulls: Mutex::default(), registry }
    }

    /// Forgets the pulls that failed, so the next use tries them again (a reload).
    pub fn retry_failed(&self) {
        self.failed_pulls.lock().expect("failed pulls").clear();
    }

    /// The store, opened on first use.
    pub fn store(&self) -> Result<std::sync::Arc<Store>, ImageError> {
        let mut store = self.store.lock().expect("image store");
        if let Some(s) = &*store {
            return Ok(s.clone());
        }
        let s = std::sync::Arc::new(Store::open(&self.dir)?);
        s.hold()?;
        *store = Some(s.clone());
        Ok(s)
    }

    /// The image `reference`, ready to run.
    pub fn get(&self, reference: &str) -> Result<std::sync::Arc<Image>, ImageError> {
        if let Some(image) = self.resolved.lock().expect("resolved images").get(reference) {
            return Ok(image.clone());
        }
        if let Some(message) = self.failed_pulls.lock().expect("failed pulls").get(reference) {
            return Err(ImageError::Source {
                reference: reference.to_string(),
                message: format!("{message} (the pull is tried again when fcsup reloads or restarts)"),
            });
        }
        let image = match registry::resolve(&*self.store()?, reference, &self.registry) {
            Ok(image) => std::sync::Arc::new(image),
            Err(ImageError::Source { reference: r, message }) if !registry::is_local(reference) => {
                self.failed_pulls.lock().expect("failed pulls").insert(reference.to_string(), message.clone());
                return Err(ImageError::Source { reference: r, message });
            }
            Err(e) => return Err(e),
        };
        self.resolved.lock().expect("resolved images").insert(reference.to_string(), image.clone());
        Ok(image)
    }
}

/// The content-addressed image store (see the module's doc).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Serializes read-modify-write of `images.json` within this process (`index.lock`, an
    /// flock, across processes).
    index_lock: Mutex<()>,
    /// A shared flock on `in-use.lock` while a supervisor runs instances from the store (see
    /// [`Store::hold`]).
    held: Mutex<Option<Flock<File>>>,
}

/// `images.json` locked for a read-modify-write, in this process and across processes.
struct IndexGuard<'a> {
    _flock: Flock<File>,
    _guard: std::sync::MutexGuard<'a, ()>,
}

/// A blob being written into the store: hashed as it is written into a temporary file of the
/// store; [`BlobWriter::commit`] puts it in place, a drop without commit leaves nothing.
#[derive(Debug)]
pub struct BlobWriter {
    digest: String,
    expected_size: Option<u64>,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    dest: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if let Some(size) = self.expected_size.filter(|size| self.written > *size) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("blob {} is larger than its descriptor's {size} bytes", self.digest)));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl BlobWriter {
    /// Checks size and digest and renames the blob into place; on a mismatch the temporary
    /// file is removed and the error names the blob's digest.
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        let file = self.file.take().expect("not committed yet");
        if let Some(expected) = self.expected_size {
            if expected != self.written {
                return Err(ImageError::SizeMismatch { digest: self.digest.clone(), expected, actual: self.written });
            }
        }
        let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hasher).finalize()));
        if actual != self.digest {
            return Err(ImageError::DigestMismatch { digest: self.digest.clone(), actual });
        }
        file.sync_all().map_err(io_err(format!("sync {}", self.tmp.display())))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).map_err(io_err(format!("move blob {} into place", self.digest)))?;
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Not committed, or a failed commit: the temporary file goes (after a commit it is
        // already gone).
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Refuses a cache another user could change: its layers become instances' roots. `dir` must
/// be a real directory (not a symlink) owned by the user fcsup runs as, and each directory
/// above it owned by that user or root and writable by nobody else (a sticky one like /tmp
/// excepted).
fn check_private(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| ImageError::Io {
        op: format!("use {} as the image cache", dir.display()),
        source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
    };
    let meta = fs::symlink_metadata(dir).map_err(io_err(format!("stat {}", dir.display())))?;
    if !meta.file_type().is_dir() {
        return Err(refuse("it is not a directory (a symlink is refused)".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!("it is owned by uid {}, not {me}", meta.uid())));
    }
    let absolute = fs::canonicalize(dir).map_err(io_err(format!("resolve {}", dir.display())))?;
    for parent in absolute.ancestors().skip(1) {
        let m = fs::metadata(parent).map_err(io_err(format!("stat {}", parent.display())))?;
        let writable_by_others = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != me && m.uid() != 0) || writable_by_others {
            return Err(refuse(format!("{} could be changed by another user", parent.display())));
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) with `mode` on the last component.
fn mkdir_mode(dir: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(ImageError::Io { op: format!("create {}", dir.display()), source: e }),
    }
}

impl Store {
    /// Opens (creating if needed) the store under `dir`; the directory is made private to root.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, ImageError> {
        let dir = dir.into();
        mkdir_mode(&dir, 0o700)?;
        check_private(&dir)?;
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io_err(format!("chmod {}", dir.display())))?;
        for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
            mkdir_mode(&dir.join(sub), 0o700)?;
        }
        Ok(Store { dir, index_lock: Mutex::new(()), held: Mutex::default() })
    }

    /// Marks the store as in use by this process until it exits: removing images (`fcsup image
    /// rm`, eviction) is refused meanwhile, since running instances' roots are its layers.
    pub fn hold(&self) -> Result<(), ImageError> {
        let mut held = self.held.lock().expect("store hold");
        if held.is_none() {
            let lock = Flock::lock(self.lock_file("in-use.lock")?, FlockArg::LockShared)
                .map_err(|(_, e)| ImageError::Io { op: "lock the image cache (shared)".into(), source: e.into() })?;
            *held = Some(lock);
        }
        Ok(())
    }

    fn lock_file(&self, name: &str) -> Result<File, ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))
    }

    fn lock_index(&self) -> Result<IndexGuard<'_>, ImageError> {
        let guard = self.index_lock.lock().expect("image index");
        let flock = Flock::lock(self.lock_file("index.lock")?, FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::Io { op: "lock the image index".into(), source: e.into() })?;
        Ok(IndexGuard { _flock: flock, _guard: guard })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Whether the blob `digest` is in the store.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file()))
    }

    /// A writer for the blob `digest` (see [`BlobWriter`]).
    pub fn blob_writer(&self, digest: &str, expected_size: Option<u64>) -> Result<BlobWriter, ImageError> {
        let dest = self.blob_path(digest)?;
        let tmp = self.dir.join("tmp").join(format!("blob-{}", uuid::Uuid::new_v4()));
        let file = File::options().write(true).create_new(true).open(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        Ok(BlobWriter { digest: digest.to_string(), expected_size, tmp, file: Some(file), hasher: Sha256::new(), written: 0, dest })
    }

    /// Copies `reader` into the store as the blob `digest`, verified while it is copied.
    pub fn put_blob(&self, digest: &str, expected_size: Option<u64>, mut reader: impl Read) -> Result<PathBuf, ImageError> {
        if self.has_blob(digest) {
            return self.blob_path(digest);
        }
        let mut w = self.blob_writer(digest, expected_size)?;
        io::copy(&mut reader, &mut w).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => {
                ImageError::SizeMismatch { digest: digest.to_string(), expected: expected_size.unwrap_or(0), actual: w.written }
            }
            _ => ImageError::Io { op: format!("copy blob {digest}"), source: e },
        })?;
        w.commit()
    }

    /// Puts `bytes` in the store under their own digest; returns the digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        self.put_blob(&digest, Some(bytes.len() as u64), bytes)?;
        Ok(digest)
    }

    /// Puts `bytes` in the store; when `named` (a digest the source gave them) they must have
    /// that digest. Returns their digest.
    pub fn put_bytes_named(&self, bytes: &[u8], named: Option<&str>) -> Result<String, ImageError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if let Some(named) = named {
            if named != digest {
                return Err(ImageError::DigestMismatch { digest: named.to_string(), actual: digest });
            }
        }
        self.put_blob(&digest, Some(bytes.len() as u64), bytes)?;
        Ok(digest)
    }

    /// Reads a manifest or config blob (JSON; refused past 8 MiB, as containerd does for
    /// manifests: an image's author must not make the supervisor hold more).
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        const MAX_JSON_BLOB: u64 = 8 << 20;
        let path = self.blob_path(digest)?;
        if fs::symlink_metadata(&path).is_ok_and(|m| m.len() > MAX_JSON_BLOB) {
            return Err(ImageError::Io {
                op: format!("read {digest}"),
                source: io::Error::new(io::ErrorKind::InvalidData, "a manifest or config larger than 8 MiB is refused"),
            });
        }
        fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob(digest.to_string()),
            _ => ImageError::Io { op: format!("read {}", path.display()), source: e },
        })
    }

    /// Reads the manifest `manifest_digest` and its config from the store, unpacks the layers
    /// not unpacked yet, and records `reference` as that image.
    pub fn commit_image(&self, reference: &str, manifest_digest: &str) -> Result<Image, ImageError> {
        let image = self.load(manifest_digest, true)?;
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        index.insert(reference.to_string(), manifest_digest.to_string());
        self.write_index(&index)?;
        Ok(image)
    }

    /// The image recorded as `reference`, if it is complete in the store.
    pub fn image(&self, reference: &str) -> Option<Image> {
        let digest = {
            let _guard = self.index_lock.lock().expect("image index");
            self.read_index().ok()?.get(reference)?.clone()
        };
        self.load(&digest, false).ok()
    }

    /// Every recorded reference with its manifest digest.
    pub fn list(&self) -> Result<Vec<(String, String)>, ImageError> {
        let _guard = self.index_lock.lock().expect("image index");
        Ok(self.read_index()?.into_iter().collect())
    }

    /// Forgets `reference`; blobs and layers no other reference uses are removed. Returns
    /// whether the reference was recorded.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let _guard = self.lock_index()?;
        // Not while a supervisor runs instances from these layers (its shared lock).
        let _exclusive = Flock::lock(self.lock_file("in-use.lock")?, FlockArg::LockExclusiveNonblock)
            .map_err(|_| ImageError::InUse(self.dir.display().to_string()))?;
        let mut index = self.read_index()?;
        if index.remove(reference).is_none() {
            return Ok(false);
        }
        self.write_index(&index)?;
        // Everything the remaining images use stays.
        let mut keep = std::collections::BTreeSet::new();
        for digest in index.values() {
            keep.insert(digest.clone());
            if let Ok(m) = self.manifest(digest) {
                keep.insert(m.config().digest().to_string());
                keep.extend(m.layers().iter().map(|l| l.digest().to_string()));
            }
        }
        for sub in ["blobs/sha256", "layers/sha256"] {
            let dir = self.dir.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&format!("sha256:{name}")) {
                    continue;
                }
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        Ok(true)
    }

    fn manifest(&self, digest: &str) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid { what: format!("manifest {digest}"), message: e.to_string() })
    }

    /// The image of manifest `manifest_digest`; unpacks missing layers when `unpack`, else
    /// fails on one.
    fn load(&self, manifest_digest: &str, unpack: bool) -> Result<Image, ImageError> {
        let manifest = self.manifest(manifest_digest)?;
        let config_digest = manifest.config().digest().to_string();
        let bytes = self.read_blob(&config_digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid { what: format!("image config {config_digest}"), message: e.to_string() })?;
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            let digest = layer.digest().to_string();
            let dir = self.dir.join("layers/sha256").join(digest_hex(&digest)?);
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir()) {
                if !unpack {
                    return Err(ImageError::MissingBlob(digest));
                }
                let blob = self.blob_path(&digest)?;
                if !blob.is_file() {
                    return Err(ImageError::MissingBlob(digest));
                }
                let compression = match layer.media_type() {
                    MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => unpack::Compression::Sniff,
                    MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => unpack::Compression::Gzip,
                    MediaType::Other(t) if t.ends_with("tar") || t.ends_with("tar.gzip") || t.ends_with("tar.gz") => unpack::Compression::Sniff,
                    other => {
                        return Err(ImageError::Layer { digest, message: format!("media type {other} is not supported (tar and tar+gzip are)") })
                    }
                };
                let tmp = self.dir.join("tmp").join(format!("layer-{}", uuid::Uuid::new_v4()));
                let result = unpack::unpack(&blob, compression, &tmp, unpack::LayerLimits::default())
                    .map_err(|message| ImageError::Layer { digest: digest.clone(), message });
                if let Err(e) = result.and_then(|()| {
                    // Another unpack of the same layer may have won the race: keep the first.
                    match fs::rename(&tmp, &dir) {
                        Ok(()) => Ok(()),
                        Err(_) if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir()) => Ok(()),
                        Err(e) => Err(ImageError::Io { op: format!("move layer {digest} into place"), source: e }),
                    }
                }) {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
                let _ = fs::remove_dir_all(&tmp);
            }
            layers.push(dir);
        }
        let c = config.config().clone().unwrap_or_default();
        let config = ImageConfig {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        };
        Ok(Image { manifest_digest: manifest_digest.to_string(), layers, config })
    }

    fn read_index(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.dir.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid { what: path.display().to_string(), message: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::Io { op: format!("read {}", path.display()), source: e }),
        }
    }

    /// Replaces `images.json` atomically.
    fn write_index(&self, index: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.dir.join("images.json");
        let tmp = self.dir.join("tmp").join(format!("images-{}.json", uuid::Uuid::new_v4()));
        let bytes = serde_json::to_vec_pretty(index).expect("a map of strings serializes");
        fs::write(&tmp, bytes).map_err(io_err(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("replace {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn a_cache_another_user_could_change_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = Store::open(&link).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        if nix::unistd::geteuid().is_root() {
            let theirs = t.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = Store::open(&theirs).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            let open = t.path().join("open");
            fs::create_dir(&open).unwrap();
            fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
            let e = Store::open(open.join("cache")).unwrap_err();
            assert!(e.to_string().contains("could be changed by another user"), "{e}");
        }
        Store::open(t.path().join("mine")).unwrap();
    }

    #[test]
    fn blob_writer_commits_only_a_matching_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let d = sha(b"hello");
        let mut w = store.blob_writer(&d, Some(5)).unwrap();
        w.write_all(b"hello").unwrap();
        w.commit().unwrap();
        assert!(store.has_blob(&d));

        let other = sha(b"other");
        let mut w = store.blob_writer(&other, Some(5)).unwrap();
        w.write_all(b"hellx").unwrap();
        let err = w.commit().unwrap_err().to_string();
        assert!(err.contains(&other), "{err}");
        assert!(!store.has_blob(&other));
        let mut w = store.blob_writer(&other, Some(9)).unwrap();
        w.write_all(b"other").unwrap();
        assert!(matches!(w.commit(), Err(ImageError::SizeMismatch { .. })));
        let w = store.blob_writer(&other, None).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("s/tmp")).unwrap().count(), 0, "no temporary file left");
        assert!(matches!(store.blob_writer("sha256:zz", None), Err(ImageError::BadDigest(_))));
    }
}
