//! OCI hooks, bundles and CDI specs against real processes: a recording hook script, failing,
//! hanging and daemonising hooks, the NVIDIA legacy hook entry run with a fake hook on PATH,
//! and (as root) `createContainer` in another mount namespace and a CDI spec naming real
//! driverless device nodes (notes/gpu.md §6).
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fcsup::oci::bundle::{Bundle, BundleConfig};
use fcsup::oci::cdi::{NodeKind, Registry};
use fcsup::oci::hooks::{self, HookError, HookOptions, HookPhase};
use fcsup::oci::nvidia;
use oci_spec::runtime::Hook;

/// Records its arguments, exact environment, cwd, mount namespace and stdin under
/// `$2/$1.*`; `HOOK_MODE` makes it fail, hang (with a forked child) or leave a daemon.
const RECORDER: &str = r#"#!/bin/sh
out="$2/$1"
printf '%s\n' "$@" > "$out.argv"
tr '\0' '\n' < /proc/$$/environ > "$out.env"
readlink /proc/$$/cwd > "$out.cwd"
readlink /proc/$$/ns/mnt > "$out.mnt"
cat > "$out.stdin"
if [ -n "$HOOK_MARKER" ]; then cat "$HOOK_MARKER" > "$out.marker"; fi
case "$HOOK_MODE" in
fail) echo partial; echo boom >&2; exit 3;;
hang) sleep 1000 & echo $! > "$out.child"; sleep 1000;;
daemon) sleep 1000 & echo $! > "$out.child"; exit 0;;
esac
exit 0
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::create_dir(dir.path().join("bundle")).unwrap();
        let rec = dir.path().join("bin/hook-recorder");
        fs::write(&rec, RECORDER).unwrap();
        fs::set_permissions(&rec, fs::Permissions::from_mode(0o755)).unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn hook(&self, name: &str, env: &[&str], timeout: Option<i64>) -> Hook {
        let mut h = Hook::default();
        h.set_path(self.path("bin/hook-recorder"));
        h.set_args(Some(vec!["hook-recorder".into(), name.into(), self.path("out").display().to_string()]));
        h.set_env(Some(env.iter().map(|s| s.to_string()).collect()));
        h.set_timeout(timeout);
        h
    }

    fn read(&self, name: &str, what: &str) -> String {
        fs::read_to_string(self.path(&format!("out/{name}.{what}"))).unwrap_or_else(|e| panic!("{name}.{what}: {e}"))
    }
}

fn state(phase: HookPhase, bundle: &Path) -> oci_spec::runtime::State {
    hooks::state(phase, "inst-abc", Some(4242), bundle, &HashMap::from([("k".to_string(), "v".to_string())]))
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_dead(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    dead(pid)
}

#[test]
fn hook_gets_state_on_stdin_exact_env_args_and_bundle_cwd() {
    let f = Fixture::new();
    let bundle = f.path("bundle");
    let st = state(HookPhase::CreateRuntime, &bundle);
    let h = f.hook("createRuntime", &["HOOK_TEST=1", "EMPTY=", "A=1"], Some(10));
    let out = hooks::run_hook(HookPhase::CreateRuntime, 0, &h, &st, &HookOptions::new(&bundle)).unwrap();
    assert_eq!(out.stdout, "");
    assert_eq!(f.read("createRuntime", "argv"), format!("createRuntime\n{}\n", f.path("out").display()));
    assert_eq!(f.read("createRuntime", "env"), "HOOK_TEST=1\nEMPTY=\nA=1\n", "exactly the hook's env, in its order, none of ours");
    assert_eq!(f.read("createRuntime", "cwd").trim(), bundle.display().to_string());
    let stdin: serde_json::Value = serde_json::from_str(&f.read("createRuntime", "stdin")).unwrap();
    assert_eq!(
        stdin,
        serde_json::json!({"ociVersion": hooks::OCI_VERSION, "id": "inst-abc", "status": "creating", "pid": 4242, "bundle": bundle, "annotations": {"k": "v"}})
    );
    assert_eq!(f.read("createRuntime", "mnt").trim(), fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string());
}

#[test]
fn argv0_is_args0_and_path_is_the_executable() {
    let f = Fixture::new();
    let out = f.path("out/cmdline");
    let mut h = Hook::default();
    h.set_path(PathBuf::from("/bin/sh"));
    h.set_args(Some(vec!["my-argv0".into(), "-c".into(), r#"tr '\0' '\n' < /proc/$$/cmdline > "$0""#.into(), out.display().to_string()]));
    let st = state(HookPhase::Poststart, &f.path("bundle"));
    hooks::run_hook(HookPhase::Poststart, 0, &h, &st, &HookOptions::new(f.path("bundle"))).unwrap();
    assert!(fs::read_to_string(&out).unwrap().starts_with("my-argv0\n-c\n"));
}

#[test]
fn failing_hook_names_itself_its_status_and_output() {
    let f = Fixture::new();
    let st = state(HookPhase::Poststart, &f.path("bundle"));
    let hooks_list = [f.hook("ok", &[], None), f.hook("bad", &["HOOK_MODE=fail"], None), f.hook("after", &[], None)];
    let opts = HookOptions::new(f.path("bundle"));
    let e = hooks::run_hooks(HookPhase::Poststart, &hooks_list, &st, &opts).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HookError::Failed { .. }), "{msg}");
    assert!(msg.starts_with(&format!("poststart hook #1 ({} bad ", f.path("bin/hook-recorder").display())), "{msg}");
    assert!(msg.contains("exit status: 3; stderr: boom; stdout: partial"), "{msg}");
    assert!(!f.path("out/after.argv").exists(), "run_hooks stops at the first failure");
    // run_hooks_all goes on (poststart/poststop failures are warnings).
    let errs = hooks::run_hooks_all(HookPhase::Poststart, &hooks_list, &st, &opts);
    assert_eq!(errs.len(), 1);
    assert!(f.path("out/after.argv").exists());
}

#[test]
fn missing_executable_fails_to_start() {
    let f = Fixture::new();
    let mut h = Hook::default();
    h.set_path(f.path("bin/absent"));
    let e =
        hooks::run_hook(HookPhase::Prestart, 2, &h, &state(HookPhase::Prestart, &f.path("bundle")), &HookOptions::new(f.path("bundle"))).unwrap_err();
    assert!(matches!(e, HookError::Spawn { .. }) && e.to_string().contains("prestart hook #2") && e.to_string().contains("No such file"), "{e}");
}

#[test]
fn hanging_hook_is_killed_at_its_timeout_with_the_child_it_forked() {
    let f = Fixture::new();
    let st = state(HookPhase::CreateRuntime, &f.path("bundle"));
    let h = f.hook("hang", &["HOOK_MODE=hang"], Some(1));
    let start = Instant::now();
    let e = hooks::run_hook(HookPhase::CreateRuntime, 0, &h, &st, &HookOptions::new(f.path("bundle"))).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
    assert!(e.to_string().contains("ran past its timeout of 1s"), "{e}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "took {took:?}");
    let child: i32 = f.read("hang", "child").trim().parse().unwrap();
    assert!(wait_dead(child, Duration::from_secs(5)), "the hook's child {child} survived");
}

#[test]
fn a_hook_without_timeout_gets_the_default_one() {
    let f = Fixture::new();
    let st = state(HookPhase::CreateRuntime, &f.path("bundle"));
    let h = f.hook("hang", &["HOOK_MODE=hang"], None);
    let opts = HookOptions::new(f.path("bundle")).default_timeout(Duration::from_millis(500));
    let e = hooks::run_hook(HookPhase::CreateRuntime, 0, &h, &st, &opts).unwrap_err();
    assert!(matches!(e, HookError::TimedOut { timeout, .. } if timeout == Duration::from_millis(500)), "{e}");
    let child: i32 = f.read("hang", "child").trim().parse().unwrap();
    assert!(wait_dead(child, Duration::from_secs(5)));
}

#[test]
fn a_successful_hook_leaving_a_daemon_returns_promptly() {
    let f = Fixture::new();
    let st = state(HookPhase::Poststart, &f.path("bundle"));
    let h = f.hook("daemon", &["HOOK_MODE=daemon"], Some(30));
    let start = Instant::now();
    hooks::run_hook(HookPhase::Poststart, 0, &h, &st, &HookOptions::new(f.path("bundle"))).unwrap();
    let took = start.elapsed();
    let child: i32 = f.read("daemon", "child").trim().parse().unwrap();
    // SAFETY: kill has no memory preconditions; the pid is the daemon the hook started.
    unsafe { libc::kill(child, libc::SIGKILL) };
    assert!(took < hooks::DRAIN_AFTER_EXIT + Duration::from_secs(2), "took {took:?}");
    assert!(wait_dead(child, Duration::from_secs(5)));
}

#[test]
fn nvidia_legacy_hook_reads_bundle_and_state_as_given() {
    let f = Fixture::new();
    let fake = f.path("bin/nvidia-container-runtime-hook");
    let out = f.path("out");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nstate=$(cat)\necho \"$state\" > {o}/state\nbundle=$(echo \"$state\" | sed -n 's/.*\"bundle\":\"\\([^\"]*\\)\".*/\\1/p')\ncp \"$bundle/config.json\" {o}/config.json\necho \"$@\" > {o}/args\npwd > {o}/cwd\n",
            o = out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths([f.path("bin"), PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
    let fenv = BTreeMap::from([("NVIDIA_DRIVER_CAPABILITIES".to_string(), "compute,utility".to_string())]);
    let legacy = nvidia::legacy_hook(&fenv, &["0".to_string()], Some(&path), false).unwrap().unwrap();
    let mut hooks_ = oci_spec::runtime::Hooks::default();
    HookPhase::Prestart.set_hooks(&mut hooks_, vec![legacy.hook.clone()]);
    let cfg = BundleConfig { root: f.path("rootfs"), args: vec!["/code/fn".into()], env: legacy.env.clone(), hooks: hooks_, ..Default::default() };
    let bundle = Bundle::create(f.path("bundle/inst"), &cfg.to_spec()).unwrap();
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&fs::read(bundle.config_path()).unwrap()).unwrap();
    let prestart = HookPhase::Prestart.hooks(spec.hooks().as_ref().unwrap());
    let st = state(HookPhase::Prestart, bundle.path());
    hooks::run_hooks(HookPhase::Prestart, prestart, &st, &HookOptions::new(bundle.path())).unwrap();
    assert_eq!(fs::read_to_string(out.join("args")).unwrap().trim(), "prestart");
    assert_eq!(fs::read_to_string(out.join("cwd")).unwrap().trim(), bundle.path().display().to_string());
    let seen: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(seen["root"]["path"], f.path("rootfs").display().to_string());
    assert_eq!(seen["process"]["env"], serde_json::json!(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]));
    let st_seen: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("state")).unwrap()).unwrap();
    assert_eq!(st_seen["pid"], 4242);
    let dir = bundle.path().to_path_buf();
    bundle.remove().unwrap();
    assert!(!dir.exists());
}

#[test]
fn create_container_hook_runs_in_the_instance_mount_namespace() {
    if !common::privileged() {
        return;
    }
    let f = Fixture::new();
    let inner = f.path("inner");
    fs::create_dir(&inner).unwrap();
    // A "instance": its own mount namespace with a tmpfs only it sees, then asleep.
    let script = format!("mount -t tmpfs fcsup-test {d} && echo inside > {d}/marker && exec sleep 1000", d = inner.display());
    let mut sleeper = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).stdin(Stdio::null()).spawn().unwrap();
    let pid = sleeper.id();
    let end = Instant::now() + Duration::from_secs(10);
    while !fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"sleep") {
        assert!(Instant::now() < end, "the namespace holder did not start");
        assert!(sleeper.try_wait().unwrap().is_none(), "unshare failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    let ns_link = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns_link, fs::read_link("/proc/self/ns/mnt").unwrap());
    assert!(!inner.join("marker").exists(), "the tmpfs must be private to the namespace");

    let h = f.hook("createContainer", &[&format!("HOOK_MARKER={}/marker", inner.display())], Some(10));
    let st = state(HookPhase::CreateContainer, &f.path("bundle"));
    let opts = HookOptions::new(f.dir.path()).in_mount_namespace(ns.as_fd());
    let result = hooks::run_hook(HookPhase::CreateContainer, 0, &h, &st, &opts);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    result.unwrap();
    assert_eq!(f.read("createContainer", "mnt").trim(), ns_link.display().to_string());
    assert_eq!(f.read("createContainer", "marker"), "inside\n");
    assert_eq!(f.read("createContainer", "cwd").trim(), f.dir.path().display().to_string());
}

#[test]
fn cdi_fixture_spec_resolves_real_driverless_device_nodes() {
    if !common::privileged() {
        return;
    }
    let f = Fixture::new();
    let t = f.dir.path().display().to_string();
    fs::create_dir(f.path("dev")).unwrap();
    for (name, minor) in [("fakegpu0", 0), ("fakegpu1", 1)] {
        let p = f.path(&format!("dev/{name}"));
        nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(120, minor),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
    }
    let spec = format!(
        r#"cdiVersion: "0.6.0"
kind: example.com/fakegpu
devices:
  - {{name: "0", containerEdits: {{deviceNodes: [{{path: /dev/fakegpu0, hostPath: {t}/dev/fakegpu0, permissions: rw}}]}}}}
  - {{name: "1", containerEdits: {{deviceNodes: [{{path: /dev/fakegpu1, hostPath: {t}/dev/fakegpu1}}]}}}}
containerEdits:
  env: [FAKEGPU_VISIBLE_DEVICES=0]
  hooks:
    - {{hookName: createRuntime, path: {t}/bin/hook-recorder, args: [hook-recorder, createRuntime, {t}/out]}}
"#
    );
    let (etc, run) = (f.path("etc-cdi"), f.path("run-cdi"));
    fs::create_dir(&etc).unwrap();
    fs::create_dir(&run).unwrap();
    fs::write(etc.join("fake.yaml"), spec.replace("FAKEGPU_VISIBLE_DEVICES=0", "FROM=etc")).unwrap();
    fs::write(run.join("fake.yaml"), &spec).unwrap();
    let reg = Registry::load(&[&etc, &run]);
    assert!(reg.errors().is_empty(), "{:?}", reg.errors());
    let edits = reg.resolve(&["example.com/fakegpu=0"]).unwrap();
    assert_eq!(edits.env, ["FAKEGPU_VISIBLE_DEVICES=0"], "/var/run/cdi overrides /etc/cdi");
    let n = &edits.device_nodes[..];
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].kind, n[0].major, n[0].minor, n[0].file_mode), (NodeKind::Char, 120, 0, Some(0o666)));
    let rules = edits.device_rules();
    assert_eq!((rules.len(), rules[0].major, rules[0].minor, rules[0].access.as_str()), (1, 120, 0, "rw"));
    let bundle = f.path("bundle");
    let cr = HookPhase::CreateRuntime.hooks(&edits.hooks);
    hooks::run_hooks(HookPhase::CreateRuntime, cr, &state(HookPhase::CreateRuntime, &bundle), &HookOptions::new(&bundle)).unwrap();
    assert_eq!(f.read("createRuntime", "env"), "", "a CDI hook without env gets an empty one");
}
