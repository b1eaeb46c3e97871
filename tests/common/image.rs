//! The test image of the container tests, built here with umoci (the native fixture with the
//! libraries it links, a marker file, `Env`, `WorkingDir`, a second tag running as a named
//! user) as an OCI layout and a `docker save` archive made with skopeo.

use std::path::PathBuf;
use std::process::Command;

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install umoci and skopeo)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The fixture's binary and the shared libraries it links (from `ldd`), as absolute paths.
pub fn fixture_files() -> Vec<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_fcsup-fixture"));
    let out = Command::new("ldd").arg(&exe).output().unwrap();
    let mut files = vec![exe];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    files
}

/// Builds the test image as an OCI layout `dir` tagged `app`, and its `docker save` archive
/// `archive` (tagged `app:1`).
pub struct TestImage {
    pub _dir: tempfile::TempDir,
    pub layout: PathBuf,
    pub archive: PathBuf,
}

pub fn build_image() -> TestImage {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let bundle = dir.path().join("bundle");
    let image = format!("{}:app", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for f in fixture_files() {
        let inside = if f.ends_with("fcsup-fixture") { rootfs.join("app/fcsup-fixture") } else { rootfs.join(f.strip_prefix("/").unwrap()) };
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::copy(&f, &inside).unwrap();
    }
    std::fs::write(rootfs.join("marker.txt"), "from the image\n").unwrap();
    // Root's alone (0600, owner 0): readable only by the instance's root, and only if the
    // layers show the image's owners as the instance's own ids.
    std::fs::write(rootfs.join("secret.txt"), "root only\n").unwrap();
    std::fs::set_permissions(rootfs.join("secret.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(rootfs.join("srv/work")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "IMAGE_GREETING=hello from the image",
        "--config.workingdir",
        "/srv/work",
        "--config.entrypoint",
        "/app/fcsup-fixture",
        "--config.cmd",
        "from-image-cmd",
    ]));
    // The same image running as the image's user `app` (a name from its /etc/passwd).
    run(Command::new("umoci").args(["config", "--image", &image, "--tag", "asuser", "--config.user", "app"]));
    let archive = dir.path().join("image.tar");
    run(Command::new("skopeo").args(["copy", &format!("oci:{image}"), &format!("docker-archive:{}:app:1", archive.display())]));
    TestImage { _dir: dir, layout, archive }
}
