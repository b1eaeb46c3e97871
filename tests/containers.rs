//! Privileged tests of custom containers (`runtime: custom-container`) from local images: an
//! image built here with umoci (the native fixture with the libraries it links, a marker file,
//! `Env` and `WorkingDir`), served from an OCI layout and from a `docker save` archive made
//! with skopeo, frozen like any instance, and a corrupt image refused without a cache entry.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::image::*;
use common::*;

/// A custom-container function's resource block.
/// `overrides` are lines of `customContainerConfig` (indented 8 spaces), `extra` of props.
fn container_props(name: &str, image: &str, overrides: &str, extra: &str) -> String {
    let mut s = format!(
        "  {name}:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 512\n      timeout: 10\n      customContainerConfig:\n        image: {image}\n        port: 9000\n"
    );
    for l in overrides.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("        ");
        s.push_str(l);
        s.push('\n');
    }
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn serve_with_cache(resources: &str, cache: &Path) -> Fcsup {
    Fcsup::serve_file(&format!("edition: 3.0.0\nresources:\n{resources}"), &["--image-cache", cache.to_str().unwrap()])
}

/// Entries of a store subdirectory.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// The host's overlay mounts and those under `cache`.
fn image_mounts(cache: &Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cache = cache.to_string_lossy();
    mi.lines().filter(|l| l.contains(" - overlay ") || l.contains(cache.as_ref())).map(String::from).collect()
}

/// No overlay of an instance root (nor anything under the store) is left in the host's mount
/// table: none appeared since `before`.
fn assert_no_image_mounts(cache: &Path, before: &[String]) {
    let left: Vec<String> = image_mounts(cache).into_iter().filter(|m| !before.contains(m)).collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

#[test]
fn functions_run_from_local_images_frozen_like_the_rest() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let archive = format!("docker-archive:{}", img.archive.display());
    let resources = [
        container_props("fromoci", &oci, "", "environmentVariables:\n  FROM_FC: yes-fc\n  IMAGE_GREETING: fc wins"),
        container_props("fromarchive", &archive, "", ""),
        // FC's entrypoint and command replace the image's.
        container_props("overridden", &oci, "entrypoint: [/app/fcsup-fixture]\ncommand: [fc-command, second]", ""),
        container_props("busy", &oci, "", "environmentVariables:\n  FIXTURE_BUSY_THREADS: '2'"),
        container_props("asuser", &format!("oci:{}:asuser", img.layout.display()), "", ""),
    ];
    let mounts_before = image_mounts(&cache);
    let mut fcsup = serve_with_cache(&resources.concat(), &cache);

    let show = |name: &str| {
        let r = fcsup.invoke(name, "show:/marker.txt");
        assert_eq!(r.status, 200, "{name}: {} {}", r.header("x-fc-error-type"), r.text());
        r.text()
    };
    let text = show("fromoci");
    assert!(text.contains("file=from the image"), "the marker file: {text}");
    assert!(text.contains("cwd=/srv/work\n"), "the image's WorkingDir: {text}");
    assert!(text.contains("args=[\"/app/fcsup-fixture\", \"from-image-cmd\"]"), "the image's Entrypoint and Cmd: {text}");
    assert!(text.contains("env FROM_FC=yes-fc\n") && text.contains("env IMAGE_GREETING=fc wins\n"), "FC's environment over the image's: {text}");
    assert!(text.contains("env FC_FUNCTION_NAME=fromoci\n") && text.contains("env PATH=/usr/local/sbin:"), "FC's variables, a default PATH: {text}");
    let text = show("fromarchive");
    assert!(text.contains("file=from the image") && text.contains("env IMAGE_GREETING=hello from the image\n"), "from the archive: {text}");
    assert!(text.contains("cwd=/srv/work\n"), "{text}");
    // Root of its user namespace by default; the image's User by name from its /etc/passwd.
    let status = fcsup.invoke("fromoci", "show:/proc/self/status").text();
    assert!(status.contains("Uid:\t0\t0\t0\t0\n") && status.contains("Gid:\t0\t0\t0\t0\n"), "{status}");
    let status = fcsup.invoke("asuser", "show:/proc/self/status").text();
    assert!(status.contains("Uid:\t1000\t1000\t1000\t1000\n") && status.contains("Gid:\t1000\t1000\t1000\t1000\n"), "{status}");
    assert!(status.contains("env HOME=/\n"), "{status}");
    // The image's files belong to the instance's root (idmapped layers), not to nobody.
    let secret = fcsup.invoke("fromoci", "show:/secret.txt").text();
    assert!(secret.contains("file=root only\n"), "{secret}");
    let secret = fcsup.invoke("asuser", "show:/secret.txt").text();
    assert!(secret.contains("file=<Permission denied"), "{secret}");
    let text = show("overridden");
    assert!(text.contains("args=[\"/app/fcsup-fixture\", \"fc-command\", \"second\"]"), "FC's entrypoint and command: {text}");

    // The instance's root is writable (its own layer) and its root owns its files.
    let store_layers = entries(&cache.join("layers/sha256"));
    assert!(!store_layers.is_empty(), "layers unpacked in the store");

    // A second instance of the same image reuses the unpacked layers: none is unpacked again.
    let stamp = |l: &str| std::fs::metadata(cache.join("layers/sha256").join(l)).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let before: Vec<u64> = store_layers.iter().map(|l| stamp(l)).collect();
    let rs = fcsup.invoke_concurrently("fromoci", "sleep:300", 2, Duration::ZERO);
    assert!(rs.iter().all(|(r, _)| r.status == 200));
    let ids: std::collections::HashSet<String> = rs.iter().map(|(r, _)| r.header("x-fc-instance-id").to_string()).collect();
    assert_eq!(ids.len(), 2, "two instances at once");
    assert_eq!(entries(&cache.join("layers/sha256")), store_layers, "no new layer");
    assert_eq!(store_layers.iter().map(|l| stamp(l)).collect::<Vec<_>>(), before, "layers not unpacked again");

    // The busy threads stop while the instance is frozen.
    let cg = fcsup.warm("busy");
    let a = usage_usec(&cg);
    std::thread::sleep(Duration::from_millis(500));
    let b = usage_usec(&cg);
    assert!(b - a < 5_000, "a frozen container used {} µs of CPU in 500 ms", b - a);

    fcsup.stop_and_check_clean();
    assert_no_image_mounts(&cache, &mounts_before);
    assert!(entries(&cache.join("tmp")).is_empty(), "temporary files left in the store");
}

#[test]
fn a_corrupt_image_fails_clearly_without_a_cache_entry_and_others_serve() {
    if !privileged() {
        return;
    }
    let img = build_image();
    // Corrupt the largest blob (the layer) in a copy of the layout, keeping its size.
    let bad = tempfile::tempdir().unwrap();
    run(Command::new("cp").arg("-a").arg(&img.layout).arg(bad.path().join("layout")));
    let blobs = bad.path().join("layout/blobs/sha256");
    let layer = entries(&blobs).into_iter().max_by_key(|b| std::fs::metadata(blobs.join(b)).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(blobs.join(&layer)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(blobs.join(&layer), bytes).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("images");
    let broken = format!("oci:{}:app", bad.path().join("layout").display());
    // From the archive: its layers are stored uncompressed, under other digests, so the
    // store never holds a sound copy of the corrupted blob.
    let good = format!("docker-archive:{}", img.archive.display());
    let mounts_before = image_mounts(&cache);
    let mut fcsup = serve_with_cache(&[container_props("broken", &broken, "", ""), container_props("good", &good, "", "")].concat(), &cache);
    let r = fcsup.invoke("broken", "ok");
    let body = r.text();
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "an FC error: {body}");
    assert!(body.contains(&format!("sha256:{layer}")) && body.contains("corrupt"), "the error names the blob: {body}");
    assert!(!cache.join("blobs/sha256").join(&layer).exists(), "the corrupt blob is not cached");
    assert!(!cache.join("layers/sha256").join(&layer).exists(), "no layer from it");
    let index = std::fs::read_to_string(cache.join("images.json")).unwrap_or_default();
    assert!(!index.contains(&broken), "the broken image is not recorded: {index}");
    assert!(entries(&cache.join("tmp")).is_empty(), "temporary files left in the store");
    let r = fcsup.invoke("good", "ok");
    assert_eq!(r.status, 200, "the other function serves: {}", r.text());
    fcsup.stop_and_check_clean();
    assert_no_image_mounts(&cache, &mounts_before);
}

#[test]
fn a_container_without_a_web_server_runs_once_per_event() {
    if !privileged() {
        return;
    }
    use base64::Engine as _;
    let img = build_image();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let resources = container_props("job", &oci, "webServerMode: false", "").replace("timeout: 10", "timeout: 2");
    let mounts_before = image_mounts(&cache);
    let mut fcsup = serve_with_cache(&resources, &cache);

    // The event arrives in FC_CUSTOM_CONTAINER_EVENT; exit 0 is a success with its output in Tail.
    let r = fcsup.invoke_with("job", "hello event", &[("x-fc-log-type", "Tail")]);
    assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    assert_eq!(r.header("x-fc-error-type"), "", "{}", r.text());
    let tail = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap()).unwrap();
    assert!(tail.contains("event=hello event"), "the event: {tail}");
    assert!(tail.contains("cwd=/srv/work greeting=hello from the image"), "the image's WorkingDir and Env: {tail}");
    let first = r.header("x-fc-instance-id").to_string();
    // Each event gets an instance of its own, which is gone once it exited.
    let r = fcsup.invoke("job", "again");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("x-fc-instance-id"), first, "a fresh instance per event");
    wait_for("the one-shot instances to go", Duration::from_secs(10), || fcsup.instances().is_empty().then_some(()));

    // Its whole life is the event's invoke window, CPU included.
    let r = fcsup.invoke("job", "burn:300");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-fc-request-id").to_string();
    let ledger = http(&fcsup.addr, "GET", "/admin/ledger", &[], b"").text();
    let w: serde_json::Value = ledger
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|w| w["request_ids"].as_array().unwrap().iter().any(|i| *i == id))
        .unwrap_or_else(|| panic!("no window for {id}: {ledger}"));
    assert_eq!(w["phase"], "invoke", "{w}");
    let cpu = w["cpu_us"].as_u64().unwrap();
    assert!(cpu >= 100_000 && cpu <= w["wall_us"].as_u64().unwrap() + 10_000, "a 300 ms burn billed {cpu} µs: {w}");

    // A non-zero exit is the function's error; running past the timeout is a timeout.
    let r = fcsup.invoke("job", "exit:3");
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "{}", r.text());
    assert!(r.json()["errorMessage"].as_str().unwrap().starts_with("Process exited with status 3"), "{}", r.text());
    let r = fcsup.invoke("job", "sleep:5000");
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "{}", r.text());
    assert!(r.text().contains("Function time out after 2 seconds"), "{}", r.text());

    // What an environment variable cannot carry is refused before anything starts.
    let r = http(&fcsup.addr, "POST", "/2023-03-30/functions/job/invocations", &[], b"a\0b");
    assert_eq!((r.status, r.json()["Code"].as_str().unwrap().to_string()), (400, "InvalidArgument".to_string()), "{}", r.text());
    let r = http(&fcsup.addr, "POST", "/http/job/", &[], b"x");
    assert_eq!(r.status, 400, "an HTTP trigger: {}", r.text());

    // Its layers are instances' roots: `fcsup image rm` refuses while fcsup serves from them.
    let rm = Command::new(env!("CARGO_BIN_EXE_fcsup")).args(["image", "rm", &oci, "--image-cache"]).arg(&cache).output().unwrap();
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(!rm.status.success() && err.contains("in use by a running fcsup serve"), "{err}");
    assert_eq!(fcsup.invoke("job", "still there").status, 200);

    fcsup.stop_and_check_clean();
    assert_no_image_mounts(&cache, &mounts_before);
    // Once nothing serves, it may.
    let rm = Command::new(env!("CARGO_BIN_EXE_fcsup")).args(["image", "rm", &oci, "--image-cache"]).arg(&cache).output().unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
}
