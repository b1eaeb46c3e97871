//! Pulls images from registries over the OCI distribution API into the [`Store`].
//!
//! The HTTP side (token handshake, manifest media types, digest headers) is `oci-client`'s;
//! this file decides what Docker users expect: short names resolved as Docker does, credentials
//! from `~/.docker/config.json`, plain HTTP only for loopback registries and those named insecure,
//! the host's platform out of a multi-arch index. Every blob goes through the store's
//! [`BlobWriter`](super::BlobWriter), which checks size and digest while it is written, so a
//! truncated or corrupted download never becomes a cache entry.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{current_platform_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::{Image, ImageError, Store};

/// Blobs fetched at once, as Docker's default `max-concurrent-downloads` (3).
const CONCURRENT_DOWNLOADS: usize = 3;

/// Where credentials and plain-HTTP permissions come from.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// A file in `~/.docker/config.json`'s format; `None` reads the user's own.
    pub auth_file: Option<PathBuf>,
    /// Registries (`HOST` or `HOST:PORT`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

/// What a pull did; `downloaded` is 0 when every blob was already cached.
#[derive(Debug)]
pub struct Pulled {
    /// The image, as the store committed it.
    pub image: Image,
    /// The normalized reference the image is cached under.
    pub reference: String,
    /// The digest of the (platform's) manifest.
    pub manifest_digest: String,
    /// Blobs (config and layers) the image has.
    pub blobs: usize,
    /// Blobs fetched from the registry by this pull.
    pub downloaded: usize,
    /// Bytes fetched from the registry by this pull.
    pub downloaded_bytes: u64,
}

/// A failed pull: one line naming the reference, and the layer where one is at fault.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {kind}")]
pub struct PullError {
    /// The reference, normalized (as given when it does not parse).
    pub reference: String,
    /// What went wrong.
    pub kind: PullErrorKind,
}

/// What went wrong in a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullErrorKind {
    /// The reference does not parse (the parser's reason).
    #[error("not a valid image reference: {0}")]
    InvalidReference(String),
    /// The registry has no such repository, tag or digest (the registry).
    #[error("not found in registry {0}")]
    NotFound(String),
    /// The registry refused the credentials, or asked for some (the registry).
    #[error("unauthorized at registry {0} (check the credentials in ~/.docker/config.json or --registry-auth)")]
    Unauthorized(String),
    /// No answer, or a server error (the registry, the cause).
    #[error("registry {0} unreachable: {1}")]
    Unreachable(String, String),
    /// A blob that is not what its descriptor says, or one cut short (its digest, the cause).
    #[error("layer {0} failed verification: {1}")]
    BadBlob(String, String),
    /// The cache's disk is full (the cache directory, the blob being written).
    #[error("no space left in the image cache {0} while writing {1}")]
    DiskFull(String, String),
    /// Anything else (a message).
    #[error("{0}")]
    Other(String),
}

/// The cache key for `reference`: Docker's normalization (`alpine` is
/// `docker.io/library/alpine:latest`), with skopeo's `docker://` transport prefix accepted.
/// Other strings (local sources such as `oci:DIR:TAG`) are returned unchanged.
pub fn normalize(reference: &str) -> String {
    if is_local(reference) {
        return reference.to_string();
    }
    parse(reference).map_or_else(|_| reference.to_string(), |r| r.whole())
}

/// Whether `reference` names a local source by its skopeo transport (`oci:DIR[:TAG]`,
/// `docker-archive:FILE[:NAME:TAG]`) rather than a registry image; `oci:app` would otherwise
/// read as Docker Hub's `library/oci` at tag `app`.
pub fn is_local(reference: &str) -> bool {
    ["oci:", "docker-archive:"].iter().any(|t| reference.starts_with(t))
}

fn parse(reference: &str) -> Result<Reference, PullError> {
    let s = reference.strip_prefix("docker://").unwrap_or(reference);
    s.parse::<Reference>().map_err(|e| PullError { reference: reference.to_string(), kind: PullErrorKind::InvalidReference(e.to_string()) })
}

/// Pulls `reference` into `store` (blobs it already has are not fetched again) and commits it
/// under its normalized name. Progress goes to a bar per blob on a terminal, a log line per blob
/// otherwise.
pub async fn pull(store: &Store, reference: &str, options: &RegistryOptions) -> Result<Pulled, PullError> {
    let r = parse(reference)?;
    let name = r.whole();
    let registry = r.resolve_registry().to_string();
    let ctx = Ctx { reference: name.clone(), registry: registry.clone(), cache: store_dir(store) };
    let auth = credentials(options, r.registry()).map_err(|message| ctx.other(message))?;
    let client = client(&registry, &options.insecure).map_err(|e| ctx.map(e))?;

    let accept = [OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];
    let (mut body, mut digest) = client.pull_manifest_raw(&r, &auth, &accept).await.map_err(|e| ctx.map(e))?;
    let mut manifest: OciManifest = serde_json::from_slice(&body).map_err(|e| ctx.other(format!("unreadable manifest: {e}")))?;
    if let OciManifest::ImageIndex(index) = &manifest {
        // A multi-arch image: the entry for this host, as `docker pull` picks it.
        let Some(entry) = current_platform_resolver(&index.manifests) else {
            return Err(ctx.other(format!("its index has no image for linux/{}", host_arch())));
        };
        (body, digest) = client.pull_manifest_raw(&r.clone_with_digest(entry.clone()), &auth, &accept).await.map_err(|e| ctx.map(e))?;
        manifest = serde_json::from_slice(&body).map_err(|e| ctx.other(format!("unreadable manifest: {e}")))?;
    }
    let OciManifest::Image(image) = manifest else {
        return Err(ctx.other("an image index points at another index".to_string()));
    };

    // Config and layers first, the manifest last: a manifest in the store means its blobs are.
    let mut blobs: Vec<OciDescriptor> = vec![image.config.clone()];
    blobs.extend(image.layers.iter().cloned());
    let progress = Progress::new();
    let started = Instant::now();
    let total = blobs.len();
    let results: Vec<Option<u64>> = futures_util::stream::iter(blobs.into_iter().map(|d| fetch_blob(&client, &r, store, d, &ctx, &progress)))
        .buffer_unordered(CONCURRENT_DOWNLOADS)
        .try_collect()
        .await?;
    if !store.has_blob(&digest) {
        store.put_blob(&digest, Some(body.len() as u64), &body[..]).map_err(|e| ctx.store_error(&digest, e))?;
    }
    let image = store.commit_image(&name, &digest).map_err(|e| ctx.store_error(&digest, e))?;
    mark_used(store, &name);
    let downloaded = results.iter().flatten().count();
    let downloaded_bytes = results.iter().flatten().sum();
    tracing::info!(
        "pulled {name} ({digest}): {downloaded} of {total} blobs downloaded, {downloaded_bytes} bytes in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Pulled { image, reference: name, manifest_digest: digest, blobs: total, downloaded, downloaded_bytes })
}

/// The bytes an image takes in the registry's terms: its config and (compressed) layers, read
/// from its manifest in the store.
pub fn image_size(store: &Store, manifest_digest: &str) -> Option<u64> {
    let bytes = std::fs::read(store.blob_path(manifest_digest).ok()?).ok()?;
    let m: OciImageManifest = serde_json::from_slice(&bytes).ok()?;
    let sizes = std::iter::once(&m.config).chain(&m.layers).map(|d| u64::try_from(d.size).ok());
    sizes.sum::<Option<u64>>()
}

// Usage records: `<cache>/used/<sha256 of the reference>`, whose mtime is the image's last use
// (a pull, or an instance started from it), so that `ls` can show it and eviction can pick
// the least recently used. They live beside the store rather than in `images.json` so that
// marking a use never rewrites the index.

fn used_path(store: &Store, reference: &str) -> PathBuf {
    use sha2::Digest as _;
    store.dir().join("used").join(hex::encode(sha2::Sha256::digest(reference.as_bytes())))
}

/// Records that `reference` was used now (best effort: a failure only ages the record).
pub fn mark_used(store: &Store, reference: &str) {
    let path = used_path(store, reference);
    let result = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(&path)?;
        f.set_modified(std::time::SystemTime::now())
    });
    if let Err(e) = result {
        tracing::debug!("cannot record the use of {reference} in {}: {e}", path.display());
    }
}

/// When `reference` was last used, if ever recorded.
pub fn last_used(store: &Store, reference: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(used_path(store, reference)).and_then(|m| m.modified()).ok()
}

/// Drops `reference`'s usage record (after the image is removed).
pub fn forget_used(store: &Store, reference: &str) {
    let _ = std::fs::remove_file(used_path(store, reference));
}

/// Bytes the cache takes on disk: its blobs and unpacked layers.
pub fn cache_size(store: &Store) -> u64 {
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| walk(&e.path())).sum())
    }
    walk(&store.dir().join("blobs")) + walk(&store.dir().join("layers"))
}

/// Removes images, least recently used first, until the cache takes at most `max_bytes`;
/// the references in `in_use` (the images functions run from) are never removed. Returns the
/// references removed; the cache may stay larger when the images in use alone exceed it.
pub fn evict(store: &Store, max_bytes: u64, in_use: &[String]) -> Result<Vec<String>, ImageError> {
    let mut removed = Vec::new();
    if cache_size(store) <= max_bytes {
        return Ok(removed);
    }
    let mut candidates: Vec<(Option<std::time::SystemTime>, String)> =
        store.list()?.into_iter().map(|(r, _)| r).filter(|r| !in_use.contains(r)).map(|r| (last_used(store, &r), r)).collect();
    // Never used sorts first (None < Some).
    candidates.sort();
    for (_, reference) in candidates {
        if cache_size(store) <= max_bytes {
            break;
        }
        match store.remove(&reference) {
            Ok(true) => {
                forget_used(store, &reference);
                tracing::info!("evicted {reference} from the image cache (over {max_bytes} bytes)");
                removed.push(reference);
            }
            Ok(false) => {}
            Err(e @ ImageError::InUse(_)) => {
                tracing::warn!("not evicting: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The image `reference` for a function's instances: a local source imported (see
/// [`super::import`]); a registry image from the cache, pulled first when it is not there
/// (with `options`' credentials and insecure registries).
/// Blocking, like an import: the pull runs on a thread and runtime of its own, so it may be
/// called from inside the supervisor's runtime.
pub fn resolve(store: &Store, reference: &str, options: &RegistryOptions) -> Result<Image, ImageError> {
    if is_local(reference) {
        return super::import(store, reference);
    }
    let name = normalize(reference);
    if let Some(image) = store.image(&name) {
        mark_used(store, &name);
        return Ok(image);
    }
    pull_in_child(store, reference, options)?;
    let image = store.image(&name).ok_or_else(|| ImageError::Source { reference: reference.into(), message: "the pull left no image".into() })?;
    mark_used(store, &name);
    Ok(image)
}

/// The address space a pull may use: a registry is not trusted, and a body it makes the client
/// hold (an endless manifest, a huge token reply) must end the pull, not the supervisor.
const PULL_ADDRESS_SPACE: u64 = 4 << 30;

/// How long a pull may take in all (`FCSUP_PULL_TIMEOUT`, seconds): a registry that trickles
/// bytes never trips a read timeout.
fn pull_deadline() -> std::time::Duration {
    let secs = std::env::var("FCSUP_PULL_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    std::time::Duration::from_secs(secs)
}

/// The longest line of a pull's output the supervisor keeps: a registry's error body can end up
/// in it, and the supervisor's memory is not the registry's to fill.
const MAX_LINE: u64 = 4096;

/// The next line of `r`, cut at [`MAX_LINE`] bytes (the rest of the line skipped); `None` at
/// the end.
fn bounded_line(r: &mut impl std::io::BufRead) -> Option<String> {
    use std::io::{BufRead, Read};
    let mut buf = Vec::new();
    if r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf).ok()? == 0 {
        return None;
    }
    if !buf.ends_with(b"\n") {
        let mut rest = Vec::new();
        loop {
            rest.clear();
            match r.by_ref().take(MAX_LINE).read_until(b'\n', &mut rest) {
                Ok(n) if n > 0 && !rest.ends_with(b"\n") => {}
                _ => break,
            }
        }
        buf.extend_from_slice("…".as_bytes());
    }
    Some(String::from_utf8_lossy(&buf).trim_end().to_string())
}

/// Runs `fcsup image pull` as a child process (same store, `options` as its flags) with a
/// bounded address space and an overall deadline, and dying with the supervisor; its log
/// lines are passed on, its last one is the error.
fn pull_in_child(store: &Store, reference: &str, options: &RegistryOptions) -> Result<(), ImageError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let failed = |message: String| ImageError::Source { reference: reference.to_string(), message };
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find fcsup to pull with: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["image", "pull", reference, "--image-cache"]).arg(store.dir()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(auth) = &options.auth_file {
        cmd.arg("--registry-auth").arg(auth);
    }
    for host in &options.insecure {
        cmd.arg("--insecure-registry").arg(host);
    }
    // SAFETY: between fork and exec the child makes two plain syscalls (prctl, setrlimit).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, PULL_ADDRESS_SPACE, PULL_ADDRESS_SPACE)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| failed(format!("cannot start the pull: {e}")))?;
    let stderr = child.stderr.take().expect("piped");
    // The child's lines pass through; its `Error: …` line is the reason.
    let relay = std::thread::spawn(move || {
        let mut error = String::new();
        let mut lines = std::io::BufReader::new(stderr);
        while let Some(line) = bounded_line(&mut lines) {
            eprintln!("{line}");
            if let Some(e) = line.strip_prefix("Error: ") {
                error = e.to_string();
            }
        }
        error
    });
    let deadline = Instant::now() + pull_deadline();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let last = relay.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            let why = last.trim();
            let why = why.strip_prefix(&format!("{reference}: ")).or_else(|| why.strip_prefix(&format!("{}: ", normalize(reference)))).unwrap_or(why);
            Err(failed(match (why.is_empty(), s.signal()) {
                (false, _) => why.to_string(),
                (true, Some(sig)) => format!(
                    "the pull was killed by signal {sig}: the registry's answers outgrew the pull's {} GiB, or it crashed",
                    PULL_ADDRESS_SPACE >> 30
                ),
                (true, None) => format!("the pull failed ({s})"),
            }))
        }
        None => Err(failed(format!("the pull did not finish within {} s (FCSUP_PULL_TIMEOUT)", pull_deadline().as_secs()))),
    }
}

/// The names a pull's errors carry.
struct Ctx {
    reference: String,
    registry: String,
    cache: String,
}

impl Ctx {
    fn err(&self, kind: PullErrorKind) -> PullError {
        PullError { reference: self.reference.clone(), kind }
    }

    fn other(&self, message: String) -> PullError {
        self.err(PullErrorKind::Other(message))
    }

    /// A registry answer or a transport failure, as the user should read it.
    fn map(&self, e: OciDistributionError) -> PullError {
        let registry = self.registry.clone();
        let kind = match e {
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => PullErrorKind::Unauthorized(registry),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)) {
                    PullErrorKind::NotFound(registry)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    PullErrorKind::Unauthorized(registry)
                } else {
                    let msg = envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>().join("; ");
                    PullErrorKind::Other(format!("registry {registry} refused: {msg}"))
                }
            }
            OciDistributionError::ServerError { code: 404, .. } | OciDistributionError::ImageManifestNotFoundError(_) => {
                PullErrorKind::NotFound(registry)
            }
            OciDistributionError::ServerError { code: 401 | 403, .. } => PullErrorKind::Unauthorized(registry),
            OciDistributionError::ServerError { code, message, .. } => {
                PullErrorKind::Unreachable(registry, format!("HTTP {code}: {}", message.trim()))
            }
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                PullErrorKind::Unreachable(registry, source_chain(&e))
            }
            OciDistributionError::DigestError(e) => PullErrorKind::BadBlob("manifest".to_string(), e.to_string()),
            e => PullErrorKind::Other(source_chain(&e)),
        };
        self.err(kind)
    }

    /// The store refused or failed to write `digest`: a full disk, a blob that is not what its
    /// descriptor says, or anything else the store reports.
    fn store_error(&self, digest: &str, e: ImageError) -> PullError {
        let digest = digest.to_string();
        let kind = match e {
            ImageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => PullErrorKind::DiskFull(self.cache.clone(), digest),
            ImageError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => PullErrorKind::BadBlob(digest, source.to_string()),
            ImageError::DigestMismatch { actual, .. } => PullErrorKind::BadBlob(digest, format!("the registry sent content with digest {actual}")),
            ImageError::SizeMismatch { expected, actual, .. } => {
                PullErrorKind::BadBlob(digest, format!("{actual} bytes received where {expected} were expected"))
            }
            e => PullErrorKind::Other(e.to_string()),
        };
        self.err(kind)
    }
}

/// `e` and its causes on one line (reqwest's top-level message alone says only "error sending request").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn store_dir(store: &Store) -> String {
    store.dir().display().to_string()
}

/// Fetches one blob into the store unless it is there; the bytes fetched, `None` if skipped.
async fn fetch_blob(
    client: &Client,
    r: &Reference,
    store: &Store,
    d: OciDescriptor,
    ctx: &Ctx,
    progress: &Progress,
) -> Result<Option<u64>, PullError> {
    if store.has_blob(&d.digest) {
        progress.skipped(&d.digest);
        return Ok(None);
    }
    let size = u64::try_from(d.size).map_err(|_| ctx.other(format!("layer {} has a negative size", d.digest)))?;
    let mut stream = client.pull_blob_stream(r, &d).await.map_err(|e| match ctx.map(e) {
        PullError { reference, kind: PullErrorKind::NotFound(_) } => {
            PullError { reference, kind: PullErrorKind::BadBlob(d.digest.clone(), "missing from the registry".to_string()) }
        }
        other => other,
    })?;
    let writer = store.blob_writer(&d.digest, Some(size)).map_err(|e| ctx.store_error(&d.digest, e))?;
    let bar = progress.bar(&d.digest, size);
    // The store's writer is blocking file I/O: it runs on a blocking thread fed chunk by chunk.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let digest = d.digest.clone();
    let op = format!("write blob {digest}");
    let writing = tokio::task::spawn_blocking(move || -> Result<u64, ImageError> {
        let mut writer = writer;
        let mut n = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk).map_err(|source| ImageError::Io { op: op.clone(), source })?;
            n += chunk.len() as u64;
        }
        writer.commit()?;
        Ok(n)
    });
    let mut received = 0u64;
    let mut transfer_error = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
                // More than the descriptor's size fails in the writer, which then hangs up.
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                transfer_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = transfer_error {
        drop(tx);
        // The writer is dropped uncommitted: nothing of the blob stays.
        let _ = writing.await;
        bar.abandon();
        // oci-client checks the digest at the end of the stream too, and says so in an I/O error.
        let cause = match e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>()) {
            Some(_) if received < size => format!("truncated: {received} of {size} bytes received"),
            Some(DigestError::VerificationError { actual, .. }) => format!("the registry sent content with digest {actual}"),
            Some(other) => other.to_string(),
            None => format!("download cut after {received} of {size} bytes: {}", source_chain(&e)),
        };
        return Err(ctx.err(PullErrorKind::BadBlob(digest, cause)));
    }
    drop(tx);
    let written = writing.await.map_err(|e| ctx.other(format!("writer for {digest}: {e}")))?.map_err(|e| {
        bar.abandon();
        ctx.store_error(&digest, e)
    })?;
    progress.done(bar, &digest, written);
    Ok(Some(written))
}

/// An `oci-client` client that speaks plain HTTP to `registry` only if it is on loopback or
/// listed as insecure, as Docker does.
fn client(registry: &str, insecure: &[String]) -> Result<Client, OciDistributionError> {
    // reqwest is built without a bundled crypto provider (no OpenSSL, no aws-lc build): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if plain_http(registry, insecure) { ClientProtocol::Http } else { ClientProtocol::Https };
    let config = ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(current_platform_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    Client::try_from(config)
}

/// Whether `registry` (`host[:port]`) may be reached without TLS.
fn plain_http(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|i| i == registry || i.strip_prefix("http://").is_some_and(|i| i.trim_end_matches('/') == registry)) {
        return true;
    }
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || insecure.iter().any(|i| i == host)
}

/// The host of `host[:port]`, brackets of an IPv6 literal removed.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

/// `~/.docker/config.json`'s shape, as far as fcsup reads it.
#[derive(serde::Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials for `registry` (as the reference names it: `docker.io` for Docker Hub) from
/// the auth file or the user's Docker config; anonymous if neither has an entry.
fn credentials(options: &RegistryOptions, registry: &str) -> Result<RegistryAuth, String> {
    let (path, required) = match &options.auth_file {
        Some(p) => (p.clone(), true),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => (Path::new(&d).join("config.json"), false),
            None => match std::env::var_os("HOME") {
                Some(h) => (Path::new(&h).join(".docker/config.json"), false),
                None => return Ok(RegistryAuth::Anonymous),
            },
        },
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(format!("cannot read registry credentials {}: {e}", path.display())),
    };
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| format!("{} is not a Docker config.json: {e}", path.display()))?;
    lookup(&config, registry).map_err(|e| format!("{}: {e}", path.display())).map(|a| {
        if matches!(a, RegistryAuth::Anonymous) {
            if let Some(store) = &config.creds_store {
                tracing::warn!("{} names credential helper {store:?}, which fcsup does not run; pulling {registry} anonymously", path.display());
            }
        }
        a
    })
}

/// The entry for `registry`, matched as Docker matches `auths` keys (scheme and path ignored;
/// Docker Hub under any of its names).
fn lookup(config: &DockerConfig, registry: &str) -> Result<RegistryAuth, String> {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let hub = HUB.contains(&registry);
    let entry = config.auths.iter().find(|(key, _)| {
        let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        let k = k.split('/').next().unwrap_or(k);
        k == registry || (hub && HUB.contains(&k))
    });
    let Some((key, entry)) = entry else { return Ok(RegistryAuth::Anonymous) };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let Some(auth) = &entry.auth else { return Ok(RegistryAuth::Anonymous) };
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
    let (user, pass) = decoded.split_once(':').ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
    Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

/// A bar per blob on a terminal; a log line per blob otherwise.
struct Progress {
    bars: Option<indicatif::MultiProgress>,
}

impl Progress {
    fn new() -> Self {
        Self { bars: std::io::stderr().is_terminal().then(indicatif::MultiProgress::new) }
    }

    fn bar(&self, digest: &str, size: u64) -> indicatif::ProgressBar {
        let Some(m) = &self.bars else { return indicatif::ProgressBar::hidden() };
        let bar = m.add(indicatif::ProgressBar::new(size));
        if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(short(digest).to_string());
        bar
    }

    fn skipped(&self, digest: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(format!("{}: already cached", short(digest)));
            }
            None => tracing::info!("{digest}: already cached"),
        }
    }

    fn done(&self, bar: indicatif::ProgressBar, digest: &str, bytes: u64) {
        if self.bars.is_some() {
            bar.finish();
        } else {
            tracing::info!("{digest}: pulled {bytes} bytes");
        }
    }
}

/// `sha256:0123456789ab`, as Docker shows layers.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The host's architecture as OCI names it (Go's GOARCH), as `current_platform_resolver` matches it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pull_s_lines_are_cut_so_a_registry_cannot_fill_the_supervisor() {
        let long = "x".repeat(3 * 4096);
        let text = format!("first\nError: {long}\nlast\n");
        let mut r = std::io::BufReader::new(text.as_bytes());
        assert_eq!(super::bounded_line(&mut r).as_deref(), Some("first"));
        let cut = super::bounded_line(&mut r).unwrap();
        assert!(cut.starts_with("Error: xxx") && cut.ends_with('…') && cut.len() <= 4096 + 3, "{}", cut.len());
        assert_eq!(super::bounded_line(&mut r).as_deref(), Some("last"));
        assert_eq!(super::bounded_line(&mut r), None);
    }

    use super::*;

    #[test]
    fn references_normalize_as_docker() {
        assert_eq!(normalize("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(normalize("docker://alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(normalize("127.0.0.1:5000/test/app:1"), "127.0.0.1:5000/test/app:1");
        assert_eq!(normalize("oci:/tmp/dir:tag"), "oci:/tmp/dir:tag");
        assert_eq!(normalize("oci:layout"), "oci:layout");
        assert!(matches!(parse("a:b:c"), Err(PullError { kind: PullErrorKind::InvalidReference(_), .. })));
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure() {
        let none: Vec<String> = vec![];
        assert!(plain_http("127.0.0.1:5000", &none));
        assert!(plain_http("localhost:5000", &none));
        assert!(plain_http("[::1]:5000", &none));
        assert!(!plain_http("registry.example.com", &none));
        assert!(!plain_http("10.0.0.1:5000", &none));
        assert!(plain_http("10.0.0.1:5000", &["10.0.0.1:5000".to_string()]));
        assert!(plain_http("10.0.0.1:5000", &["10.0.0.1".to_string()]));
        assert!(!plain_http("10.0.0.1:5000", &["10.0.0.1:5001".to_string()]));
    }

    #[test]
    fn docker_config_entries_match_by_host() {
        let config: DockerConfig = serde_json::from_str(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTE6cDE="},"reg.example.com:5000":{"auth":"dTI6cDI6eA=="},"other":{"auth":"!!"}}}"#,
        )
        .unwrap();
        let basic = |r: &str| match lookup(&config, r) {
            Ok(RegistryAuth::Basic(u, p)) => Some((u, p)),
            _ => None,
        };
        assert_eq!(basic("docker.io"), Some(("u1".into(), "p1".into())));
        assert_eq!(basic("reg.example.com:5000"), Some(("u2".into(), "p2:x".into())));
        assert!(matches!(lookup(&config, "reg.example.com"), Ok(RegistryAuth::Anonymous)));
        assert!(lookup(&config, "other").unwrap_err().contains("not base64"));
    }
}
