//! Images from local sources, named as skopeo's transports name them:
//! `oci:/path/dir[:tag]` (an OCI image layout; an index resolves to this host's platform) and
//! `docker-archive:/path/file.tar[:name:tag]` (`docker save`'s format, converted to an OCI
//! manifest in the store). Every blob is verified by digest while it is copied in.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use super::{digest_hex, Image, ImageError, Store};

/// The image `reference` from the store, imported from its local source on first use.
pub fn import(store: &Store, reference: &str) -> Result<Image, ImageError> {
    if let Some(image) = store.image(reference) {
        return Ok(image);
    }
    let source = |message: String| ImageError::Source { reference: reference.to_string(), message };
    if let Some(rest) = reference.strip_prefix("oci:") {
        let (dir, tag) = split(rest);
        let manifest = oci_layout(store, reference, Path::new(dir), tag)?;
        store.commit_image(reference, &manifest)
    } else if let Some(rest) = reference.strip_prefix("docker-archive:") {
        let (file, tag) = split(rest);
        let manifest = docker_archive(store, reference, Path::new(file), tag)?;
        store.commit_image(reference, &manifest)
    } else {
        Err(source("not in the image cache, and not a local source (oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG])".into()))
    }
}

/// `path[:rest]`: the path ends at the first `:` (as in skopeo's transports).
fn split(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((p, t)) if !t.is_empty() => (p, Some(t)),
        _ => (s.trim_end_matches(':'), None),
    }
}

/// This host's platform in OCI's words.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn copy_blob(store: &Store, layout: &Path, desc: &Descriptor) -> Result<(), ImageError> {
    let digest = desc.digest().to_string();
    if store.has_blob(&digest) {
        return Ok(());
    }
    let path = layout.join("blobs/sha256").join(digest_hex(&digest)?);
    let file = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::MissingBlob(format!("{digest} (not in {})", layout.display())),
        _ => ImageError::Io { op: format!("open {}", path.display()), source: e },
    })?;
    store.put_blob(&digest, Some(desc.size()), file)?;
    Ok(())
}

/// Copies the image `tag` of the layout at `dir` into the store; returns its manifest digest.
fn oci_layout(store: &Store, reference: &str, dir: &Path, tag: Option<&str>) -> Result<String, ImageError> {
    let source = |message: String| ImageError::Source { reference: reference.to_string(), message };
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(|e| source(format!("cannot read {}: {e}", index_path.display())))?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid { what: index_path.display().to_string(), message: e.to_string() })?;
    fn name(d: &Descriptor) -> Option<&str> {
        d.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).map(String::as_str)
    }
    let mut desc = match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .find(|d| name(d) == Some(tag))
            .ok_or_else(|| source(format!("no image tagged {tag:?} in {}", index_path.display())))?,
        None if index.manifests().len() == 1 => &index.manifests()[0],
        None => return Err(source(format!("{} holds {} images: name one with :TAG", index_path.display(), index.manifests().len()))),
    }
    .clone();
    // An index (multi-platform image): this host's platform.
    while *desc.media_type() == MediaType::ImageIndex {
        copy_blob(store, dir, &desc)?;
        let bytes = std::fs::read(store.blob_path(desc.digest().as_ref())?)
            .map_err(|e| ImageError::Io { op: format!("read {}", desc.digest()), source: e })?;
        let inner: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid { what: format!("index {}", desc.digest()), message: e.to_string() })?;
        desc = inner
            .manifests()
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()))
            .ok_or_else(|| source(format!("no image for linux/{} in index {}", host_arch(), desc.digest())))?
            .clone();
    }
    copy_blob(store, dir, &desc)?;
    let digest = desc.digest().to_string();
    let bytes = std::fs::read(store.blob_path(&digest)?).map_err(|e| ImageError::Io { op: format!("read {digest}"), source: e })?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid { what: format!("manifest {digest}"), message: e.to_string() })?;
    copy_blob(store, dir, manifest.config())?;
    for layer in manifest.layers() {
        copy_blob(store, dir, layer)?;
    }
    Ok(digest)
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The `rootfs.diff_ids` of a docker image config: the digests of the uncompressed layers.
#[derive(Debug, Deserialize)]
struct DockerConfig {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// A 64-hex-digit run in an archive member's name (`<hex>.json`, `blobs/sha256/<hex>`).
fn hex_in_name(name: &str) -> Option<String> {
    name.split(['/', '.']).find(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())).map(|h| format!("sha256:{}", h.to_ascii_lowercase()))
}

/// Converts the image `tag` of the `docker save` archive `file` into the store; returns the
/// digest of the OCI manifest written for it. Layers are verified against the config's
/// `diff_ids` (docker archives hold them uncompressed), the config against its file name.
fn docker_archive(store: &Store, reference: &str, file: &Path, tag: Option<&str>) -> Result<String, ImageError> {
    let source = |message: String| ImageError::Source { reference: reference.to_string(), message };
    let open = || File::open(file).map_err(|e| source(format!("cannot read {}: {e}", file.display())));
    // First pass: manifest.json and the configs (small).
    let mut manifest_json = None;
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(open()?);
    for entry in archive.entries().map_err(|e| source(format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| source(format!("bad archive: {e}")))?;
        let name = entry.path().map_err(|e| source(format!("bad archive: {e}")))?.to_string_lossy().trim_start_matches("./").to_string();
        if name == "manifest.json" || name.ends_with(".json") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| source(format!("read {name}: {e}")))?;
            if name == "manifest.json" {
                manifest_json = Some(bytes);
            } else {
                small.insert(name, bytes);
            }
        }
    }
    let manifest_json = manifest_json.ok_or_else(|| source("no manifest.json: not a docker save archive".into()))?;
    let entries: Vec<ArchiveEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| ImageError::Invalid { what: format!("{}: manifest.json", file.display()), message: e.to_string() })?;
    let entry = match tag {
        Some(tag) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == tag || t.strip_prefix("localhost/") == Some(tag)))
            .ok_or_else(|| source(format!("no image tagged {tag:?} in the archive")))?,
        None if entries.len() == 1 => &entries[0],
        None => return Err(source(format!("the archive holds {} images: name one with :NAME:TAG", entries.len()))),
    };
    let config_name = entry.config.trim_start_matches("./");
    let config = match small.get(config_name) {
        Some(c) => c.clone(),
        None => {
            // Newer docker names it blobs/sha256/<hex>, with no .json suffix.
            let mut archive = tar::Archive::new(open()?);
            let mut found = None;
            for e in archive.entries().map_err(|e| source(format!("bad archive: {e}")))? {
                let mut e = e.map_err(|e| source(format!("bad archive: {e}")))?;
                if e.path().is_ok_and(|p| p.to_string_lossy().trim_start_matches("./") == config_name) {
                    let mut bytes = Vec::new();
                    e.read_to_end(&mut bytes).map_err(|err| source(format!("read {config_name}: {err}")))?;
                    found = Some(bytes);
                    break;
                }
            }
            found.ok_or_else(|| source(format!("the archive lacks {config_name}")))?
        }
    };
    let config_digest = store.put_bytes_named(&config, hex_in_name(config_name).as_deref())?;
    let docker: DockerConfig =
        serde_json::from_slice(&config).map_err(|e| ImageError::Invalid { what: format!("image config {config_digest}"), message: e.to_string() })?;
    if docker.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Invalid {
            what: format!("image config {config_digest}"),
            message: format!("{} diff_ids for {} layers", docker.rootfs.diff_ids.len(), entry.layers.len()),
        });
    }
    // Second pass: the layers, each written under its diff_id and so verified as it is copied.
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, diff_id) in entry.layers.iter().zip(&docker.rootfs.diff_ids) {
        if !store.has_blob(diff_id) {
            wanted.insert(name.trim_start_matches("./"), diff_id);
        }
    }
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut archive = tar::Archive::new(open()?);
    for e in archive.entries().map_err(|e| source(format!("bad archive: {e}")))? {
        let e = e.map_err(|e| source(format!("bad archive: {e}")))?;
        let name = e.path().map_err(|e| source(format!("bad archive: {e}")))?.to_string_lossy().trim_start_matches("./").to_string();
        if let Some(diff_id) = wanted.remove(name.as_str()) {
            let size = e.size();
            store.put_blob(diff_id, Some(size), e)?;
        }
    }
    if let Some((name, _)) = wanted.into_iter().next() {
        return Err(source(format!("the archive lacks the layer {name}")));
    }
    let mut layers = Vec::new();
    for diff_id in &docker.rootfs.diff_ids {
        let size = match sizes.get(diff_id) {
            Some(s) => *s,
            None => {
                let s = std::fs::metadata(store.blob_path(diff_id)?).map_err(|e| ImageError::Io { op: format!("stat {diff_id}"), source: e })?.len();
                sizes.insert(diff_id.clone(), s);
                s
            }
        };
        layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    store.put_bytes(&serde_json::to_vec(&manifest).expect("JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_as_skopeo_does() {
        assert_eq!(split("/a/b:latest"), ("/a/b", Some("latest")));
        assert_eq!(split("/a/b"), ("/a/b", None));
        assert_eq!(split("/x.tar:app:1.2"), ("/x.tar", Some("app:1.2")));
        assert_eq!(hex_in_name(&format!("blobs/sha256/{}", "a".repeat(64))), Some(format!("sha256:{}", "a".repeat(64))));
        assert_eq!(hex_in_name("abc/layer.tar"), None);
    }
}
