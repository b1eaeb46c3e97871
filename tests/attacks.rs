//! Attack repros (review attack13). Each test asserts the *safe* behaviour, so it fails
//! while the hole is open.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::devices::*;
use common::image::*;
use common::*;

fn container_props(name: &str, image: &str) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 512\n      timeout: 10\n      customContainerConfig:\n        image: {image}\n        port: 9000\n"
    )
}

/// CVE-2024-21626 ("Leaky Vessels") shape: an image whose `WorkingDir` is
/// `/proc/self/fd/N` makes the init chdir (as host root, after the chroot, with every fd of
/// the supervisor still open) into a host directory; the function then starts with its cwd
/// outside its root and walks `..` up to the host's `/`.
#[test]
fn an_image_working_dir_through_proc_self_fd_stays_inside_the_root() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let image = format!("{}:app", img.layout.display());
    let fds: Vec<u32> = (3..=40).collect();
    for n in &fds {
        run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--tag",
            &format!("wd{n}"),
            "--config.workingdir",
            &format!("/proc/self/fd/{n}"),
        ]));
    }
    let marker = format!("/var/tmp/attack13-marker-{}", std::process::id());
    std::fs::write(&marker, "HOST FILE\n").unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("images");
    let resources: String = fds.iter().map(|n| container_props(&format!("wd{n}"), &format!("oci:{}:wd{n}", img.layout.display()))).collect();
    let mut fcsup = Fcsup::serve_file(&format!("edition: 3.0.0\nresources:\n{resources}"), &["--image-cache", cache.to_str().unwrap()]);
    let up = "../".repeat(40);
    let mut escaped = Vec::new();
    for n in &fds {
        let r = fcsup.invoke(&format!("wd{n}"), &format!("show:{up}{}", marker.trim_start_matches('/')));
        if r.text().contains("file=HOST FILE") {
            escaped.push(*n);
        }
    }
    let fds = Command::new("ls").arg("-l").arg(format!("/proc/{}/fd", fcsup.pid())).output().unwrap();
    eprintln!("supervisor fds:\n{}", String::from_utf8_lossy(&fds.stdout));
    fcsup.stop();
    let _ = std::fs::remove_file(&marker);
    assert!(escaped.is_empty(), "functions read a host file through their working directory (fd numbers {escaped:?})");
}

/// OCI hooks run inside `sandbox::spawn`, i.e. inside `Launcher::launch`, which the pool calls
/// synchronously under its `std::sync::Mutex` on a tokio worker. A slow prestart hook (NVIDIA's
/// take seconds; the default timeout is 60 s) therefore blocks a worker, and every other request
/// to that function blocks another worker on the pool's mutex: with as many concurrent GPU
/// requests as workers, the whole supervisor (other functions, the admin socket) stops.
#[test]
fn a_slow_hook_does_not_stall_other_functions() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let cdi = fake_gpu_spec(fx.path(), "      hooks: [{hookName: prestart, path: /bin/sleep, args: [sleep, '4']}]\n");
    let oci = format!("oci:{}:app", img.layout.display());
    let gpu = format!(
        "  gpu:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 4096\n      cpu: 2\n      timeout: 30\n      instanceConcurrency: 1\n      customContainerConfig:\n        image: {oci}\n        port: 9000\n      gpuConfig:\n        gpuType: fc.gpu.tesla.1\n        gpuMemorySize: 2048\n      fcsup:\n        gpus: [0]\n"
    );
    let plain = container_props("plain", &oci);
    let cache = fx.path().join("images");
    let mut f = Fcsup::serve_file(
        &format!("edition: 3.0.0\nresources:\n{gpu}{plain}"),
        &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()],
    );
    assert_eq!(f.invoke("plain", "echo:warm").status, 200);
    let addr = f.addr.clone();
    let n = std::thread::available_parallelism().map(usize::from).unwrap_or(2) + 2;
    let gpus: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http(&addr, "POST", "/2023-03-30/functions/gpu/invocations", &[], b"echo:x").status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let r = f.invoke("plain", "echo:during");
    let took = t0.elapsed();
    for g in gpus {
        let _ = g.join();
    }
    f.stop();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(1), "a warm request to another function took {took:?} while GPU starts ran their hooks");
}

/// A CDI mount's target is made (mkdir, open O_CREAT) and mounted on after the chroot, by the
/// init as host root, with the supervisor's fds still open: an image whose target directory
/// is a symlink to `/proc/self/fd/N` gets the target file created in a host directory.
#[test]
fn a_cdi_mount_target_through_proc_self_fd_stays_inside_the_root() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let image = format!("{}:app", img.layout.display());
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let fds: Vec<u32> = (3..=40).collect();
    for n in &fds {
        let link = bundle.join("rootfs/usr/lib/fake");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/proc/self/fd/{n}/{}var/tmp", "../".repeat(12)), &link).unwrap();
        run(Command::new("umoci").args(["repack", "--image", &format!("{}:g{n}", img.layout.display())]).arg(&bundle));
    }
    let fx = tempfile::tempdir().unwrap();
    std::fs::write(fx.path().join("libfake.so"), "lib").unwrap();
    let probe = format!("attack13-grant-probe-{}", std::process::id());
    let cdi = fx.path().join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    std::fs::write(
        cdi.join("fake.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: example.com/lib\ndevices:\n  - name: \"0\"\n    containerEdits:\n      mounts:\n        - {{hostPath: {}/libfake.so, containerPath: /usr/lib/fake/{probe}, options: [ro, nosuid, nodev, bind]}}\n",
            fx.path().display()
        ),
    )
    .unwrap();
    let resources: String = fds
        .iter()
        .map(|n| {
            format!(
                "{}      fcsup:\n        devices: [example.com/lib=0]\n",
                container_props(&format!("g{n}"), &format!("oci:{}:g{n}", img.layout.display()))
            )
        })
        .collect();
    let cache = fx.path().join("images");
    let mut f = Fcsup::serve_file(
        &format!("edition: 3.0.0\nresources:\n{resources}"),
        &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()],
    );
    for n in &fds {
        let r = f.invoke(&format!("g{n}"), "echo:x");
        eprintln!("g{n}: {} {}", r.status, r.text().chars().take(300).collect::<String>());
    }
    let fds = Command::new("ls").arg("-l").arg(format!("/proc/{}/fd", f.pid())).output().unwrap();
    eprintln!("supervisor fds:\n{}", String::from_utf8_lossy(&fds.stdout));
    f.stop();
    let found = Command::new("find").args(["/", "/tmp", "/run", "/var", "/sys/fs/cgroup", "-xdev", "-name", &probe]).output().unwrap();
    let found = String::from_utf8_lossy(&found.stdout).to_string();
    for p in found.lines() {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_dir(p);
    }
    assert!(found.trim().is_empty(), "granted mount targets made on the host: {found}");
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .collect()
}

/// `sandbox::enter` forks the supervisor (clone3, no exec) and the middle process keeps a copy
/// of every fd the supervisor had for as long as the Initializer runs (up to 300 s): the
/// supervisor's exclusive `lock`, its listening sockets and accepted connections, the image
/// store's `in-use.lock`, and the write ends of the status pipes of instances being started at
/// that moment on other threads (whose `spawn` then waits for EOF until the Initializer ends).
/// (A crash is covered: the watchdog kills the instance's cgroup, the middle with it.)
#[test]
fn a_running_initializer_holds_no_supervisor_fd() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    run(Command::new("umoci").args(["unpack", "--image", &format!("{}:app", img.layout.display())]).arg(&bundle));
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/sleep", bundle.join("rootfs/bin/sleep")).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &format!("{}:sleepy", img.layout.display())]).arg(&bundle));
    let fx = tempfile::tempdir().unwrap();
    let cdi = fake_gpu_spec(fx.path(), "");
    let secs = &format!("{}", 100_000 + std::process::id());
    let gpu = format!(
        "  gpu:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 4096\n      cpu: 2\n      timeout: 30\n      customContainerConfig:\n        image: oci:{}:sleepy\n        port: 9000\n      gpuConfig:\n        gpuType: fc.gpu.tesla.1\n        gpuMemorySize: 2048\n      fcsup:\n        gpus: [0]\n      instanceLifecycleConfig:\n        initializer:\n          command: [/bin/sleep, \"{secs}\"]\n          timeout: 300\n",
        img.layout.display()
    );
    let cache = fx.path().join("images");
    let mut f = Fcsup::serve_file(
        &format!("edition: 3.0.0\nresources:\n{gpu}"),
        &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()],
    );
    let addr = f.addr.clone();
    std::thread::spawn(move || http(&addr, "POST", "/2023-03-30/functions/gpu/invocations", &[], b"echo:x"));
    let sleeper = wait_for("the Initializer to run", Duration::from_secs(30), || pids_running(&["/bin/sleep", secs.as_str()]).first().copied());
    let status = std::fs::read_to_string(format!("/proc/{sleeper}/status")).unwrap();
    let middle: i32 = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{middle}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok().map(|l| format!("{} -> {}", e.file_name().to_string_lossy(), l.display())))
        .collect();
    let sup = i32::try_from(f.pid()).unwrap();
    let supervisor_fds = std::fs::read_dir(format!("/proc/{sup}/fd")).unwrap().count();
    // The userns helper forked while the Initializer's middle was made waits for a pipe's EOF
    // the middle holds: the thread that made it, and every start that needs a fresh userns.
    std::thread::sleep(Duration::from_secs(2));
    let stuck_userns = std::fs::read_dir(format!("/proc/{sup}/task")).unwrap().flatten().any(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "fcsup-userns")
            && std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "do_wait")
    });
    // A graceful stop while the Initializer runs.
    // SAFETY: kill(2) of the supervisor this test started.
    unsafe { libc::kill(sup, libc::SIGTERM) };
    let t0 = Instant::now();
    let zombie = || std::fs::read_to_string(format!("/proc/{sup}/stat")).map_or(true, |s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')));
    while !zombie() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_in_time = zombie();
    // Release it: kill the instance (its Initializer), then the harness's stop.
    let cg = std::fs::read_to_string(format!("/proc/{sleeper}/cgroup")).unwrap_or_default();
    if let Some(cg) = cg.lines().find_map(|l| l.strip_prefix("0::")) {
        let _ = std::fs::write(cgroup2_mount().join(cg.trim_start_matches('/')).join("cgroup.kill"), "1");
    }
    f.stop();
    let leaked: Vec<&String> = held.iter().filter(|l| l.contains("socket:") || l.contains("lock") || l.contains("ledger")).collect();
    assert!(
        leaked.is_empty() && !stuck_userns && stopped_in_time,
        "the Initializer's middle process (pid {middle}) holds {} fds (the supervisor {supervisor_fds}), among them {leaked:#?}; \
         userns helper stuck: {stuck_userns}; SIGTERM honoured within 10 s: {stopped_in_time}",
        held.len()
    );
}
