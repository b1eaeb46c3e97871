//! Privileged tests of pulling images from a real registry (issue 12): Debian's
//! `docker-registry` started on a loopback port, images built with `umoci` and pushed with
//! `skopeo`, then `fcsup image pull|ls|rm` against it.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// True when the registry tools are here and the host can run privileged tests; without the
/// tools a skip, or a failure under `FCSUP_REQUIRE_PRIVILEGED=1` (CI installs them).
fn ready() -> bool {
    if !common::privileged() {
        return false;
    }
    let missing: Vec<&str> = ["/usr/bin/docker-registry", "/usr/bin/skopeo", "/usr/bin/umoci", "/usr/bin/htpasswd"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("missing {} (apt-get install docker-registry skopeo umoci apache2-utils)", missing.join(", "));
    assert!(std::env::var("FCSUP_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "registry test cannot run: {why}");
    eprintln!("SKIPPED: {why}");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// A `docker-registry` serving on a free loopback port, its storage in a temporary directory.
struct Registry {
    dir: tempfile::TempDir,
    child: Child,
    addr: String,
}

impl Registry {
    /// Starts the registry; with `user` set, it asks for that user and password (htpasswd,
    /// bcrypt), which the distribution registry checks with HTTP basic auth.
    fn start(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((u, p)) = user {
            let out = run(Command::new("htpasswd").args(["-Bbn", u, p]));
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: fcsup-test\n    path: {}\n", dir.path().join("htpasswd").display()));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry { dir, child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < deadline, "registry did not start: {}", r.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Blob downloads the registry served (its access log's `GET …/blobs/` lines).
    fn blob_gets(&self) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).count()
    }

    /// The file the registry serves the blob `digest` from.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Pushes the OCI layout `layout`'s tag `1` as `repo`, with `creds` (`user:pass`) if given.
    fn push(&self, layout: &Path, repo: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        cmd.arg(format!("oci:{}:1", layout.display())).arg(format!("docker://{}/{repo}", self.addr));
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image built with umoci as an OCI layout (tag `1`): two layers (a `marker` file holding
/// `marker`, then `/app/data`), `Env` and `WorkingDir` set. Returns the layout and its layers'
/// digests, bottom first.
fn build_image(dir: &Path, marker: &str) -> (PathBuf, Vec<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    std::fs::write(bundle.join("rootfs/marker"), marker).unwrap();
    // --refresh-bundle: the next repack is a layer on top of this one.
    run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
    std::fs::create_dir(bundle.join("rootfs/app")).unwrap();
    std::fs::write(bundle.join("rootfs/app/data"), format!("data of {marker}\n")).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &image, "--config.env", "MARKER_ENV=from-image", "--config.workingdir", "/app"]));
    // The layout's index names the manifest; the manifest names the layers.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(&layout, manifest_digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    (layout, layers)
}

fn blob(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

/// `fcsup image ARGS --image-cache CACHE`, credentials looked up in `docker_config` only.
fn fcsup(cache: &Path, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .arg("image")
        .args(args)
        .arg("--image-cache")
        .arg(cache)
        .env("DOCKER_CONFIG", docker_config)
        .env("FCSUP_LOG", "fcsup=info")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What a failed pull must leave: no image recorded, no blob that did not verify, no
/// temporary file.
fn assert_no_entry(cache: &Path, reference: &str, bad_blob: Option<&str>) {
    let index = std::fs::read_to_string(cache.join("images.json")).unwrap_or_default();
    assert!(!index.contains(reference), "{reference} recorded: {index}");
    if let Some(d) = bad_blob {
        assert!(!blob(cache, d).exists(), "blob {d} kept");
    }
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

/// The one line an error prints (anyhow's `Error: …`).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure: {}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert_eq!(stderr.lines().skip_while(|l| !l.starts_with("Error: ")).count(), 1, "the error is one line: {stderr}");
    errors[0].to_string()
}

#[test]
fn pull_caches_layers_once_and_rm_removes_them() {
    if !ready() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (layout, layers) = build_image(work.path(), "pulled-from-registry");
    reg.push(&layout, "test/app:1", None);
    let cache = work.path().join("cache");
    let reference = format!("{}/test/app:1", reg.addr);

    let out = fcsup(&cache, work.path(), &["pull", &reference]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&reference) && stdout.contains("3 of 3 blobs downloaded"), "{}", text(&out));
    // A log line per blob when not on a terminal.
    for d in &layers {
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{d}: pulled")), "{}", text(&out));
        assert!(blob(&cache, d).is_file(), "layer {d} not cached");
    }
    // Unpacked once, bottom layer first: the marker is in the first layer's directory.
    let bottom = cache.join("layers/sha256").join(layers[0].strip_prefix("sha256:").unwrap());
    assert_eq!(std::fs::read_to_string(bottom.join("marker")).unwrap(), "pulled-from-registry");
    let gets = reg.blob_gets();
    assert_eq!(gets, 3, "config and two layers: {}", reg.log());

    // Again: the tag is resolved anew, but no blob is fetched.
    let again = fcsup(&cache, work.path(), &["pull", &reference]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 of 3 blobs downloaded"), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already cached"), "{}", text(&again));
    assert_eq!(reg.blob_gets(), gets, "second pull downloaded blobs");

    // By digest too, under its own name, still without downloads.
    let ls = text(&fcsup(&cache, work.path(), &["ls"]));
    let digest =
        ls.lines().find(|l| l.starts_with(&reference)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or_else(|| panic!("{ls}")).to_string();
    assert!(digest.starts_with("sha256:"), "{ls}");
    let by_digest = format!("{}/test/app@{digest}", reg.addr);
    let out = fcsup(&cache, work.path(), &["pull", &by_digest]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("0 of 3"), "{}", text(&out));
    let ls = text(&fcsup(&cache, work.path(), &["ls"]));
    assert!(ls.contains(&by_digest) && ls.contains("seconds ago"), "{ls}");

    // rm: the blobs stay while the digest reference uses them, go with the last one.
    assert!(fcsup(&cache, work.path(), &["rm", &reference]).status.success());
    assert!(blob(&cache, &layers[0]).is_file());
    let out = fcsup(&cache, work.path(), &["rm", &by_digest]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!blob(&cache, &layers[0]).exists() && !bottom.exists(), "blobs and layers left after rm");
    let ls = text(&fcsup(&cache, work.path(), &["ls"]));
    assert!(!ls.contains(&reg.addr), "{ls}");
    let err = error_line(&fcsup(&cache, work.path(), &["rm", &reference]));
    assert!(err.contains(&reference) && err.contains("no such image"), "{err}");

    // The same image from its OCI layout, without the registry.
    let local = format!("oci:{}:1", layout.display());
    let out = fcsup(&cache, work.path(), &["pull", &local]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{local} {digest}: imported")), "{}", text(&out));
    assert!(blob(&cache, &layers[0]).is_file());
    assert!(fcsup(&cache, work.path(), &["rm", &local]).status.success());
}

#[test]
fn missing_tag_and_registry_down_give_one_line_errors() {
    if !ready() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_image(work.path(), "m");
    reg.push(&layout, "test/app:1", None);
    let cache = work.path().join("cache");

    let reference = format!("{}/test/app:nope", reg.addr);
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(err.contains(&reference) && err.contains("not found"), "{err}");
    assert_no_entry(&cache, &reference, None);
    let reference = format!("{}/test/absent:1", reg.addr);
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(err.contains(&reference) && err.contains("not found"), "{err}");

    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let reference = format!("127.0.0.1:{port}/test/app:1");
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(err.contains(&reference) && err.contains("unreachable"), "{err}");
    assert_no_entry(&cache, &reference, None);

    let err = error_line(&fcsup(&cache, work.path(), &["pull", "Not/A:Valid:Reference"]));
    assert!(err.contains("Not/A:Valid:Reference") && err.contains("not a valid image reference"), "{err}");
}

#[test]
fn corrupted_or_truncated_blob_names_the_layer_and_leaves_no_entry() {
    if !ready() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");

    // Same size, one byte changed: only the digest can tell.
    let (layout, layers) = build_image(&work.path().join("a"), "to-be-corrupted");
    reg.push(&layout, "test/corrupt:1", None);
    let data = reg.blob_data(&layers[1]);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let reference = format!("{}/test/corrupt:1", reg.addr);
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(
        err.contains(&reference) && err.contains(&layers[1]) && err.contains("failed verification: the registry sent content with digest sha256:"),
        "{err}"
    );
    assert_no_entry(&cache, &reference, Some(&layers[1]));

    // Cut short: the registry serves what is left.
    let (layout, layers) = build_image(&work.path().join("b"), "to-be-truncated");
    reg.push(&layout, "test/truncated:1", None);
    let data = reg.blob_data(&layers[0]);
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::File::options().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
    let reference = format!("{}/test/truncated:1", reg.addr);
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(err.contains(&reference) && err.contains(&layers[0]) && err.contains(&format!("truncated: {} of {len} bytes", len / 2)), "{err}");
    assert_no_entry(&cache, &reference, Some(&layers[0]));
}

#[test]
fn basic_auth_from_docker_config_or_auth_file() {
    if !ready() {
        return;
    }
    let reg = Registry::start(Some(("fcuser", "s3cret")));
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = build_image(work.path(), "private");
    reg.push(&layout, "team/private:1", Some("fcuser:s3cret"));
    let reference = format!("{}/team/private:1", reg.addr);
    let auth = |user: &str, pass: &str| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!(r#"{{"auths":{{"{}":{{"auth":"{token}"}}}}}}"#, reg.addr)
    };

    // No credentials, then wrong ones: refused, nothing cached.
    let cache = work.path().join("cache");
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference]));
    assert!(err.contains(&reference) && err.contains("unauthorized"), "{err}");
    let wrong = work.path().join("wrong.json");
    std::fs::write(&wrong, auth("fcuser", "nope")).unwrap();
    let err = error_line(&fcsup(&cache, work.path(), &["pull", &reference, "--registry-auth", wrong.to_str().unwrap()]));
    assert!(err.contains(&reference) && err.contains("unauthorized"), "{err}");
    assert_no_entry(&cache, &reference, None);

    // --registry-auth FILE.
    let file = work.path().join("auth.json");
    std::fs::write(&file, auth("fcuser", "s3cret")).unwrap();
    let out = fcsup(&cache, work.path(), &["pull", &reference, "--registry-auth", file.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("3 of 3"), "{}", text(&out));

    // The user's Docker config (here $DOCKER_CONFIG/config.json, as Docker reads it).
    let docker = work.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(docker.join("config.json"), auth("fcuser", "s3cret")).unwrap();
    let out = fcsup(&work.path().join("cache2"), &docker, &["pull", &reference]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("3 of 3"), "{}", text(&out));
}

/// Bytes under the cache's `blobs/` and `layers/`, as `--image-cache-max` counts them.
fn du(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).unwrap().flatten().map(|e| du(&e.path())).sum()
}

#[test]
fn cache_over_its_limit_evicts_the_least_recently_used_image() {
    if !ready() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // b unpacks large, c small: once b is gone, a and c fit where a and b did.
    for (name, marker) in [("a", "a".to_string()), ("b", "b".repeat(200_000)), ("c", "c".to_string())] {
        let (layout, _) = build_image(&work.path().join(name), &marker);
        reg.push(&layout, &format!("test/{name}:1"), None);
    }
    let r = |name: &str| format!("{}/test/{name}:1", reg.addr);
    for name in ["a", "b", "a"] {
        let out = fcsup(&cache, work.path(), &["pull", &r(name)]);
        assert!(out.status.success(), "{}", text(&out));
        // Usage times are file mtimes: keep the pulls apart.
        std::thread::sleep(Duration::from_millis(20));
    }
    let max = du(&cache.join("blobs")) + du(&cache.join("layers"));
    let out = fcsup(&cache, work.path(), &["pull", &r("c"), "--image-cache-max", &max.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("evicted {}", r("b"))) && !stdout.contains(&format!("evicted {}", r("a"))), "{}", text(&out));
    let ls = text(&fcsup(&cache, work.path(), &["ls"]));
    assert!(ls.contains(&r("a")) && ls.contains(&r("c")) && !ls.contains(&r("b")), "{ls}");
    assert!(du(&cache.join("blobs")) + du(&cache.join("layers")) <= max);
}

/// The native fixture (`fcsup-fixture` and the libraries `ldd` lists) as an image in the OCI
/// layout `dir/layout`, tag `1`: a marker file, `Env`, `WorkingDir`, `Entrypoint`.
fn fixture_image(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_fcsup-fixture"));
    let ldd = run(Command::new("ldd").arg(&exe));
    let libs = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split("=>").last()?.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from))
        .collect::<Vec<_>>();
    for f in libs {
        let inside = rootfs.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::copy(&f, &inside).unwrap();
    }
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    std::fs::copy(&exe, rootfs.join("app/fcsup-fixture")).unwrap();
    std::fs::write(rootfs.join("marker.txt"), "from the registry\n").unwrap();
    std::fs::create_dir_all(rootfs.join("srv/work")).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "IMAGE_GREETING=pulled",
        "--config.workingdir",
        "/srv/work",
        "--config.entrypoint",
        "/app/fcsup-fixture",
    ]));
    layout
}

fn container_function(name: &str, image: &str) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 512\n      timeout: 10\n      customContainerConfig:\n        image: {image}\n        port: 9000\n"
    )
}

#[test]
fn a_function_serves_from_an_image_fcsup_pulls_once_from_the_registry() {
    if !ready() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let layout = fixture_image(work.path());
    reg.push(&layout, "test/fn:1", None);
    let cache = work.path().join("cache");
    let image = format!("{}/test/fn:1", reg.addr);
    let missing = format!("{}/test/fn:nope", reg.addr);
    let yaml = format!("edition: 3.0.0\nresources:\n{}{}", container_function("pulled", &image), container_function("missing", &missing));
    let mut fcsup = common::Fcsup::serve_file(&yaml, &["--image-cache", cache.to_str().unwrap()]);

    let r = fcsup.invoke("pulled", "show:/marker.txt");
    let text = r.text();
    assert_eq!(r.status, 200, "{} {text}", r.header("x-fc-error-type"));
    assert!(text.contains("file=from the registry") && text.contains("cwd=/srv/work\n") && text.contains("env IMAGE_GREETING=pulled\n"), "{text}");
    let gets = reg.blob_gets();
    assert_eq!(gets, 2, "config and layer, once: {}", reg.log());
    // A second instance at once: from the cache, nothing fetched again.
    let rs = fcsup.invoke_concurrently("pulled", "sleep:300", 2, Duration::ZERO);
    assert!(rs.iter().all(|(r, _)| r.status == 200));
    assert_eq!(reg.blob_gets(), gets, "no second pull");

    // A tag the registry lacks: FC's error on invocation, naming the image; the other serves.
    let r = fcsup.invoke("missing", "ok");
    let body = r.text();
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{body}");
    assert!(body.contains(&missing) && body.contains("not found"), "{body}");
    assert_eq!(fcsup.invoke("pulled", "ok").status, 200);
    // Once the tag exists, a reload tries the failed pull again.
    reg.push(&layout, "test/fn:nope", None);
    assert_eq!(fcsup.invoke("missing", "ok").header("x-fc-error-type"), "InitializationError", "a failed pull is not retried per request");
    fcsup.hangup();
    fcsup.wait_line("the reload", |l| l.contains("reloaded"), Duration::from_secs(60));
    let r = fcsup.invoke("missing", "ok");
    assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    assert_eq!(r.header("x-fc-error-type"), "");
    fcsup.stop_and_check_clean();
    let index = std::fs::read_to_string(cache.join("images.json")).unwrap();
    assert!(index.contains(&image) && index.contains(&missing), "{index}");
}
