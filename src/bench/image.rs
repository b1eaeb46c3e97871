//! The custom-container rows: the native fixture as an OCI image (built with `umoci`, as a
//! user's CI would), served by fcsup from its image cache, run by `crun` from the same image's
//! bundle, and pulled for the first time from a local `docker-registry`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Raw, Result};

/// The fixture's image: an OCI layout (tag `1`, entrypoint `/fcsup-fixture`) and that image
/// unpacked as an OCI runtime bundle (what `crun run` takes).
#[derive(Debug)]
pub struct FixtureImage {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// `umoci unpack` of the image: `config.json` and `rootfs/`.
    pub bundle: PathBuf,
}

impl FixtureImage {
    /// The reference fcsup's functions name it by.
    pub fn reference(&self) -> String {
        format!("oci:{}:1", self.layout.display())
    }
}

/// Whether `tool` runs (`--version`).
fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    ensure!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The shared libraries `exe` needs (none for the static fixture `cargo xtask bench` builds).
fn libraries(exe: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(exe).stderr(Stdio::null()).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("=>").last()?.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from))
        .collect()
}

/// Builds the fixture's image under `work`; `None` when `umoci` is missing.
pub fn build(work: &Path, fixture: &Path) -> Result<Option<FixtureImage>> {
    if !have("umoci") {
        return Ok(None);
    }
    let layout = work.join("layout");
    let scratch = work.join("scratch");
    let bundle = work.join("bundle");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&scratch))?;
    let rootfs = scratch.join("rootfs");
    for lib in libraries(fixture) {
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&lib, &inside)?;
    }
    std::fs::copy(fixture, rootfs.join("fcsup-fixture"))?;
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&scratch))?;
    run(Command::new("umoci").args(["config", "--image", &image, "--config.entrypoint", "/fcsup-fixture"]))?;
    std::fs::remove_dir_all(&scratch)?;
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle))?;
    Ok(Some(FixtureImage { layout, bundle }))
}

/// A `docker-registry` on a free loopback port with its storage under a directory of its own;
/// killed when dropped.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir)?;
        let port = super::peers::free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let r = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            ensure!(Instant::now() < deadline, "docker-registry did not listen on {} within 20 s", r.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// First pulls of the fixture's image from a local `docker-registry` (pushed there with
/// `skopeo`), each into an empty cache: duration and MB/s of the bytes fetched (verified and
/// unpacked as `fcsup image pull` does). `Ok(false)` when the tools are missing.
pub async fn first_pulls(image: &FixtureImage, work: &Path, n: usize, raw: &mut Raw) -> Result<bool> {
    if !Path::new("/usr/bin/docker-registry").exists() || !have("skopeo") {
        return Ok(false);
    }
    let registry = Registry::start(&work.join("registry"))?;
    let reference = format!("{}/bench/fixture:1", registry.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", image.layout.display()))
        .arg(format!("docker://{reference}")))?;
    let options = crate::image::registry::RegistryOptions::default();
    let mut rates = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        let dir = work.join(format!("pull-{i}"));
        let store = crate::image::Store::open(&dir).map_err(|e| failed!("open a cache in {}: {e}", dir.display()))?;
        let t = Instant::now();
        let pulled = crate::image::registry::pull(&store, &reference, &options).await.map_err(|e| failed!("pull {e}"))?;
        let took = t.elapsed();
        drop(store);
        std::fs::remove_dir_all(&dir)?;
        ensure!(pulled.downloaded_bytes > 0, "the first pull of {reference} fetched nothing");
        bytes = pulled.downloaded_bytes;
        raw.push("fcsup", "first_pull", "native image", took.as_secs_f64() * 1e6);
        rates.push(bytes as f64 / 1e6 / took.as_secs_f64());
    }
    raw.scalars.push(super::stats::Row::new("fcsup", "first_pull_throughput", "native image", "MB/s", &rates));
    raw.note(format!("first_pull: {:.2} MB (config and compressed layer) from docker-registry on loopback, into an empty cache", bytes as f64 / 1e6));
    Ok(true)
}
