//! The device cgroup is real: with driverless char devices of a local-use major as fake GPUs
//! (`notes/gpu.md` §6), a process in an instance cgroup opens a granted node up to the missing
//! driver (ENXIO), is refused one it was not granted (EPERM), even one it made itself, still
//! has /dev/null, and nothing stays behind: no cgroup in either hierarchy, no program.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fcsup::cgroup::{devices, own_v1_paths, Access, CgroupRoot, DeviceError, DeviceRule, DeviceRules, Enforcement, Hierarchy, Limits};
use fcsup::sandbox::sys::BpfInsn;

/// A char major no driver owns: one of the local/experimental 120–127 absent from
/// `/proc/devices`.
fn free_local_major() -> u32 {
    let devices = std::fs::read_to_string("/proc/devices").unwrap();
    let chars = devices.split("Block devices:").next().unwrap_or_default();
    let used: Vec<u32> = chars.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    (120..=127).find(|m| !used.contains(m)).expect("a free local-use char major")
}

fn mknod(path: &Path, major: u32, minor: u32) {
    use nix::sys::stat::{makedev, Mode, SFlag};
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major.into(), minor.into())).unwrap();
}

/// The v1 `devices` directory of the cgroup root `name` (hybrid hosts only).
fn v1_devices_root(name: &str) -> Option<PathBuf> {
    let hier = Hierarchy::discover(Path::new("/proc/self/mountinfo")).unwrap();
    let own = own_v1_paths(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
    let base = own.get("devices").map(|p| p.trim_start_matches('/').to_string()).unwrap_or_default();
    hier.v1.get("devices").map(|m| m.join(base).join(name))
}

/// Waits until the kernel has freed the program `id` (a cgroup's programs are released by a
/// worker after its rmdir).
fn assert_program_freed(id: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while devices::program_exists(id) {
        assert!(Instant::now() < deadline, "device program {id} still loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the probe saw: errno per attempt (0 = it worked), and its /proc/self/cgroup.
const PROBE: &str = r#"
import json, os, stat, sys
d, major = sys.argv[1], int(sys.argv[2])
def errno_of(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno
def oc(p, flags):
    os.close(os.open(p, flags))
print(json.dumps({
    "granted_rw": errno_of(lambda: oc(d + "/fake0", os.O_RDWR)),
    "not_granted": errno_of(lambda: oc(d + "/fake1", os.O_RDONLY)),
    "read_only_read": errno_of(lambda: oc(d + "/fake2", os.O_RDONLY)),
    "read_only_write": errno_of(lambda: oc(d + "/fake2", os.O_WRONLY)),
    "mknod": errno_of(lambda: os.mknod(d + "/own", 0o666 | stat.S_IFCHR, os.makedev(major, 1))),
    "own": errno_of(lambda: oc(d + "/own", os.O_RDONLY)),
    "dev_null": errno_of(lambda: oc("/dev/null", os.O_RDWR)),
    "cgroup": open("/proc/self/cgroup").read(),
}))
"#;

/// A process placed in a cgroup made by the module (as the instance's init is: v2, then the
/// v1 groups) with runc's list plus `c M:0 rw` and `c M:2 r`.
#[test]
fn granted_nodes_open_and_the_rest_are_denied() {
    if !privileged() {
        return;
    }
    let major = free_local_major();
    let fixture = tempfile::tempdir().unwrap();
    for minor in 0..3 {
        mknod(&fixture.path().join(format!("fake{minor}")), major, minor);
    }
    let hier = Hierarchy::discover(Path::new("/proc/self/mountinfo")).unwrap();
    let name = format!("fcsup-test-devices-{}", uuid::Uuid::new_v4().simple());
    let root = CgroupRoot::open(&hier, &name, &std::fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
    assert_eq!(root.capabilities().devices, Enforcement::V2, "the device program loads here");

    // One-off figures: a load, and an attach of a loaded program to a fresh cgroup.
    let program = DeviceRules::runc_default().effective().unwrap().program();
    let (mut loads, mut attaches) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let t = Instant::now();
        let prog = devices::load(&program).unwrap();
        loads.push(t.elapsed());
        let dir = root.path().join(format!("m{i}"));
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let t = Instant::now();
        devices::attach(prog.as_fd(), fd.as_fd()).unwrap();
        attaches.push(t.elapsed());
        drop(fd);
        std::fs::remove_dir(&dir).unwrap();
    }
    loads.sort();
    attaches.sort();
    eprintln!("device program of {} instructions: load p50 {:?}, attach p50 {:?} (n = 20)", program.len(), loads[10], attaches[10]);
    let mut creates = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let cg = root.create(&format!("c{i}"), &Limits::default()).unwrap();
        creates.push(t.elapsed());
        cg.remove().unwrap();
    }
    creates.sort();
    eprintln!("instance cgroup with runc's device list (program cached): create p50 {:?}", creates[10]);
    if let Some(v1) = v1_devices_root(&name) {
        let mut writes = Vec::new();
        for i in 0..20 {
            let dir = v1.join(format!("w{i}"));
            std::fs::create_dir(&dir).unwrap();
            let t = Instant::now();
            for (file, line) in DeviceRules::runc_default().effective().unwrap().v1_writes() {
                std::fs::write(dir.join(file), line).unwrap();
            }
            writes.push(t.elapsed());
            std::fs::remove_dir(&dir).unwrap();
        }
        writes.sort();
        eprintln!("of which the v1 devices.deny/allow writes (hybrid hosts): p50 {:?}", writes[10]);
    }

    let rules =
        DeviceRules::runc_default().with_granted(&[DeviceRule::allow_char(major, 0, Access::RW), DeviceRule::allow_char(major, 2, Access::READ)]);
    let cg = root.create("inst", &Limits { devices: rules, ..Limits::default() }).unwrap();
    let ids = devices::attached_ids(std::fs::File::open(cg.path()).unwrap().as_fd()).unwrap();
    assert_eq!(ids.len(), 1, "exactly one device program on the instance cgroup");
    let v1_root = v1_devices_root(&name);
    if let Some(v1) = &v1_root {
        let list = std::fs::read_to_string(v1.join("inst/devices.list")).unwrap();
        assert!(list.contains(&format!("c {major}:0 rw\n")) && list.contains("c 1:3 rwm\n") && !list.contains("a *:* rwm"), "{list}");
    }

    let procs = std::fs::File::options().write(true).open(cg.path().join("cgroup.procs")).unwrap();
    let join: Vec<i32> = std::iter::once(procs.as_raw_fd()).chain(cg.v1_procs_fds()).collect();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", PROBE]).arg(fixture.path()).arg(major.to_string());
    // SAFETY: between fork and exec the closure only calls write(2) on fds opened before the
    // fork, and iterates a vector it owns (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &join {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();

    // Clean up before judging, so a failure leaves nothing behind either.
    cg.remove().unwrap();
    drop(cg);
    root.remove().unwrap();
    drop(root);
    assert!(!hier.v2.join(&name).exists());
    if let Some(v1) = &v1_root {
        assert!(!v1.exists(), "{} left behind", v1.display());
    }
    assert_program_freed(ids[0]);

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["granted_rw"], libc::ENXIO, "granted: allowed, and no driver: {p}");
    assert_eq!(p["not_granted"], libc::EPERM, "{p}");
    assert_eq!(p["read_only_read"], libc::ENXIO, "{p}");
    assert_eq!(p["read_only_write"], libc::EPERM, "granted r only: {p}");
    assert_eq!(p["mknod"], 0, "runc's list allows mknod of any char device: {p}");
    assert_eq!(p["own"], libc::EPERM, "a node it made itself is still denied: {p}");
    assert_eq!(p["dev_null"], 0, "{p}");
    if v1_root.is_some() {
        assert!(p["cgroup"].as_str().unwrap().lines().any(|l| l.contains(":devices:") && l.ends_with("/inst")), "joined the v1 devices cgroup: {p}");
    }
}

#[test]
fn a_refused_program_carries_the_verifier_log() {
    if !privileged() {
        return;
    }
    // `exit` with r0 never set.
    let exit = BpfInsn { code: 0x95, regs: 0, off: 0, imm: 0 };
    match devices::load(&[exit]) {
        Err(e @ DeviceError::Load { .. }) => assert!(e.to_string().contains("R0 !read_ok"), "{e}"),
        other => panic!("expected a refused load, got {other:?}"),
    }
}

fn devices_props(name: &str) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 256\n      timeout: 30\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/devices").display()
    )
}

/// Probes a real instance: the v2 program attached, the v1 devices cgroup joined (hybrid), and
/// both gone with the supervisor. Returns the probe's answer.
fn probe_instance(f: &mut Fcsup, major: u32, dir: &str) -> serde_json::Value {
    let r = f.invoke("d", &format!(r#"{{"op":"probe","major":{major},"dir":"{dir}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json();
    let inst = f.instances().into_iter().next().expect("one instance");
    let cgroup = PathBuf::from(inst["cgroup"].as_str().unwrap());
    let ids = devices::attached_ids(std::fs::File::open(&cgroup).unwrap().as_fd()).unwrap();
    assert_eq!(ids.len(), 1, "one device program on {}", cgroup.display());
    let v1_root = v1_devices_root(&f.cgroup_root);
    if let Some(v1) = &v1_root {
        let list = std::fs::read_to_string(v1.join(cgroup.file_name().unwrap()).join("devices.list")).unwrap();
        assert!(list.contains("c 1:3 rwm\n") && list.contains("c 136:* rwm\n") && !list.contains("a *:* rwm"), "{list}");
        let procs = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_to_string(d.join("cgroup.procs")).unwrap().lines().map(String::from).collect();
            v.sort();
            v
        };
        let v2 = procs(&cgroup);
        assert!(!v2.is_empty());
        assert_eq!(procs(&v1.join(cgroup.file_name().unwrap())), v2, "every process of the instance is in its v1 devices cgroup too");
    }
    f.stop_and_check_clean();
    if let Some(v1) = &v1_root {
        assert!(!v1.exists(), "{} left behind", v1.display());
    }
    assert_program_freed(ids[0]);
    p
}

/// A real instance gets runc's list: /dev/null and /dev/zero work; as host root
/// (`--insecure-instances`) it can mknod a node of another major, and opening it is refused.
#[test]
fn an_instance_has_runcs_device_list() {
    if !privileged() {
        return;
    }
    let major = free_local_major();
    let mut f = Fcsup::serve_file(&format!("edition: 3.0.0\nresources:\n{}", devices_props("d")), &["--insecure-instances"]);
    // A restart after a crash removes the instance's v1 devices cgroup with the others.
    let v1_root = v1_devices_root(&f.cgroup_root);
    let leftover = f.warm("d");
    let pids = std::fs::read_to_string(Path::new(&leftover).join("cgroup.procs")).unwrap();
    f.kill_hard();
    wait_for("instance processes gone after fcsup's SIGKILL", Duration::from_secs(5), || {
        pids.lines().all(|p| !Path::new(&format!("/proc/{p}")).exists()).then_some(())
    });
    let old = v1_root.as_ref().map(|v1| v1.join(Path::new(&leftover).file_name().unwrap()));
    assert!(old.as_ref().is_none_or(|o| o.exists()), "the crash left the v1 devices cgroup");
    f.restart_after_kill();
    if let Some(old) = &old {
        assert!(!old.exists(), "{} survived the restart", old.display());
    }
    let p = probe_instance(&mut f, major, "/dev");
    assert_eq!(p["dev_null"], 0, "{p}");
    assert_eq!(p["dev_zero"], 0, "{p}");
    assert_eq!(p["mknod"], 0, "host root may mknod: {p}");
    assert_eq!(p["open_own_node"], libc::EPERM, "but not open what it made: {p}");
}

/// In its user namespace (the default) the function cannot even mknod: the kernel wants
/// CAP_MKNOD in the host's user namespace before it asks the device cgroup (tried in /tmp,
/// which it may write; its /dev belongs to the host's root).
#[test]
fn an_isolated_instance_cannot_mknod() {
    let Some(mut f) = serve_if_privileged(&devices_props("d")) else { return };
    let p = probe_instance(&mut f, free_local_major(), "/tmp");
    assert_eq!(p["dev_null"], 0, "{p}");
    assert_eq!(p["mknod"], libc::EPERM, "{p}");
}

/// `fcsup.devices` grants a CDI device: its node opens up to the missing driver (ENXIO), its
/// spec's environment and read-only mount are there; another function's instance has none of
/// it; a node of the same major it was not granted cannot be made or opened.
#[test]
fn a_cdi_device_reaches_its_instance_and_no_other() {
    if !privileged() {
        return;
    }
    let major = free_local_major();
    let fixture = tempfile::tempdir().unwrap();
    let host = fixture.path();
    for n in 0..2 {
        let node = host.join(format!("fakegpu{n}"));
        mknod(&node, major, n);
        // As NVIDIA's nodes are (mknod's mode went through the umask); the instance's copy
        // takes the host node's mode.
        std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    }
    std::fs::write(host.join("libfake.so"), "fake driver library\n").unwrap();
    let cdi = host.join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    std::fs::write(
        cdi.join("fake.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: example.com/fakegpu\ndevices:\n  - name: \"0\"\n    containerEdits:\n      deviceNodes:\n        - {{path: /dev/fakegpu0, hostPath: {h}/fakegpu0}}\n  - name: \"1\"\n    containerEdits:\n      deviceNodes:\n        - {{path: /dev/fakegpu1, hostPath: {h}/fakegpu1}}\ncontainerEdits:\n  env: [FAKE_GPU_DRIVER=1.0]\n  mounts:\n    - {{hostPath: {h}/libfake.so, containerPath: /tmp/fake/libfake.so, options: [ro, nosuid, nodev, bind]}}\n",
            h = host.display()
        ),
    )
    .unwrap();
    let granted = format!("{}      fcsup:\n        devices: [example.com/fakegpu=0]\n", devices_props("gpu"));
    let yaml = format!("edition: 3.0.0\nresources:\n{granted}{}", devices_props("plain"));
    let mut f = Fcsup::serve_file(&yaml, &["--cdi-spec-dir", cdi.to_str().unwrap()]);
    let look = r#"{"op":"look","open":["/dev/fakegpu0","/dev/fakegpu1"],"read":["/tmp/fake/libfake.so"],"write":["/tmp/fake/libfake.so"],"env":["FAKE_GPU_DRIVER"]}"#;
    let r = f.invoke("gpu", look);
    assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    let g = r.json();
    assert_eq!(g["open"]["/dev/fakegpu0"], libc::ENXIO, "granted: allowed up to the missing driver: {g}");
    assert_eq!(g["open"]["/dev/fakegpu1"], libc::ENOENT, "not granted: not there: {g}");
    assert_eq!(g["read"]["/tmp/fake/libfake.so"], "fake driver library\n", "{g}");
    assert!(
        [i64::from(libc::EROFS), i64::from(libc::EACCES)].contains(&g["write"]["/tmp/fake/libfake.so"].as_i64().unwrap()),
        "the spec's mount is read-only: {g}"
    );
    assert_eq!(g["env"]["FAKE_GPU_DRIVER"], "1.0", "{g}");
    // It cannot make the node it was not granted (no CAP_MKNOD on the host), and the cgroup
    // would refuse it anyway (tests above).
    let p = f.invoke("gpu", &format!(r#"{{"op":"probe","major":{major},"dir":"/tmp"}}"#)).json();
    assert_eq!(p["mknod"], libc::EPERM, "{p}");
    // Another function gets nothing of it.
    let o = f.invoke("plain", look).json();
    assert_eq!(o["open"]["/dev/fakegpu0"], libc::ENOENT, "{o}");
    assert_eq!(o["env"]["FAKE_GPU_DRIVER"], serde_json::Value::Null, "{o}");
    assert_eq!(o["read"]["/tmp/fake/libfake.so"], libc::ENOENT, "{o}");
    // The granted instance's cgroup allows exactly its node beyond runc's list.
    let inst = f.instances().into_iter().find(|i| i["function"] == "gpu").unwrap();
    let cgroup = PathBuf::from(inst["cgroup"].as_str().unwrap());
    if let Some(v1) = v1_devices_root(&f.cgroup_root) {
        let list = std::fs::read_to_string(v1.join(cgroup.file_name().unwrap()).join("devices.list")).unwrap();
        assert!(list.contains(&format!("c {major}:0 rwm\n")) && !list.contains(&format!("c {major}:1")), "{list}");
    }
    f.stop_and_check_clean();

    // A name no spec defines fails the start clearly; the other function serves.
    let missing = format!("{}      fcsup:\n        devices: [example.com/fakegpu=7]\n", devices_props("gpu"));
    let mut f =
        Fcsup::serve_file(&format!("edition: 3.0.0\nresources:\n{missing}{}", devices_props("plain")), &["--cdi-spec-dir", cdi.to_str().unwrap()]);
    let r = f.invoke("gpu", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{}", r.text());
    assert!(r.text().contains("example.com/fakegpu=7"), "{}", r.text());
    assert_eq!(f.invoke("plain", "{}").status, 200);
    f.stop_and_check_clean();
}
