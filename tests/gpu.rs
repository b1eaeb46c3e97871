//! Privileged tests of GPU functions without a GPU (notes/gpu.md §6): driverless char devices
//! of a local-use major stand in for the GPUs, a CDI spec of `nvidia.com/gpu` in a temp dir
//! names them with recording hooks, and a fake `nvidia-container-runtime-hook` stands in for
//! NVIDIA's legacy path. The function is the container tests' image.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::devices::*;
use common::image::build_image;
use common::*;

/// Driverless nodes `gpu0`, `gpu1` (mode 0666, as NVIDIA's are) in `dir`.
fn fake_gpus(dir: &Path, major: u32) {
    for n in 0u32..2 {
        mknod(&dir.join(format!("gpu{n}")), major, n);
    }
}

/// A GPU function of the test image (`gpus` for `fcsup.gpus`, `extra` more props lines).
fn gpu_function(name: &str, image: &str, gpus: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      runtime: custom-container\n      memorySize: 4096\n      cpu: 2\n      timeout: 10\n      customContainerConfig:\n        image: {image}\n        port: 9000\n      gpuConfig:\n        gpuType: fc.gpu.tesla.1\n        gpuMemorySize: 2048\n      fcsup:\n        gpus: {gpus}\n{extra}"
    )
}

/// Writes the shell script `script` as the program `name` in `dir/bin`; the `PATH` that finds
/// it first.
fn fake_tool(dir: &Path, name: &str, script: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join(name), format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(bin.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

fn read_when(path: &Path) -> String {
    wait_for(&format!("{} to be written", path.display()), Duration::from_secs(10), || std::fs::read_to_string(path).ok().filter(|s| !s.is_empty()))
}

/// A GPU function served through a CDI spec of `nvidia.com/gpu`: it gets exactly the GPU it
/// names (the node opens up to the missing driver; the other is not there), the spec's
/// environment, and the spec's hooks at runc's times with runc's inputs: prestart on the host
/// with the state and a bundle whose `root.path` is the image's root, createContainer inside
/// the instance's mount namespace where that root is, poststop after the stop. Its windows
/// are billed with the GPU.
#[test]
fn a_gpu_function_gets_its_gpu_and_the_specs_hooks_through_cdi() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let (host, major) = (fx.path(), free_local_major());
    fake_gpus(host, major);
    let rec = host.join("records");
    std::fs::create_dir(&rec).unwrap();
    let cdi = host.join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    let sh =
        |script: &str| format!("{{hookName: HOOK, path: /bin/sh, args: [sh, -c, '{script}'], env: [PATH=/usr/bin:/bin, REC={}]}}", rec.display());
    let hooks = [
        sh("cat > $REC/prestart-state; cp config.json $REC/prestart-config.json").replace("HOOK", "prestart"),
        sh("cat /code/marker.txt > /code/tmp/hook-saw-root; cat > /code/tmp/hook-state").replace("HOOK", "createContainer"),
        sh("cat > $REC/poststop-state").replace("HOOK", "poststop"),
    ];
    std::fs::write(
        cdi.join("nvidia.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0\"\n    containerEdits:\n      deviceNodes: [{{path: /dev/nvidia0, hostPath: {h}/gpu0}}]\n  - name: \"1\"\n    containerEdits:\n      deviceNodes: [{{path: /dev/nvidia1, hostPath: {h}/gpu1}}]\ncontainerEdits:\n  env: [NVIDIA_DRIVER=fake-580]\n  hooks:\n    - {}\n    - {}\n    - {}\n",
            hooks[0],
            hooks[1],
            hooks[2],
            h = host.display()
        ),
    )
    .unwrap();
    let cache = fx.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", gpu_function("gpu", &oci, "[0]", ""));
    let mut f = Fcsup::serve_file(&yaml, &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()]);

    let show = |path: &str| {
        let r = f.invoke("gpu", &format!("show:{path}"));
        assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
        r.text()
    };
    let t = show("/dev/nvidia0");
    assert!(t.contains("file=<No such device or address"), "its GPU: allowed, up to the missing driver: {t}");
    assert!(t.contains("env NVIDIA_DRIVER=fake-580\n"), "the spec's environment: {t}");
    assert!(show("/dev/nvidia1").contains("file=<No such file or directory"), "not the GPU it did not name");
    // createContainer ran in the instance's mount namespace, its root at /code, before the
    // function started (it wrote into the root the function now sees as /).
    assert!(show("/tmp/hook-saw-root").contains("file=from the image\n"));
    let text = show("/tmp/hook-state");
    let inside: serde_json::Value = serde_json::from_str(text.split("file=").nth(1).unwrap().split("\nenv ").next().unwrap()).expect(&text);
    let pid = f.instances()[0]["pid"].as_i64().unwrap();
    let state: serde_json::Value = serde_json::from_str(&read_when(&rec.join("prestart-state"))).unwrap();
    assert_eq!((state["status"].as_str(), state["pid"].as_i64()), (Some("creating"), Some(pid)), "prestart's state: {state}");
    assert_eq!(inside["id"], state["id"], "createContainer's state names the same instance: {inside}");
    let config: serde_json::Value = serde_json::from_str(&read_when(&rec.join("prestart-config.json"))).unwrap();
    assert_eq!(config["root"]["path"], "/code", "{config}");
    let bundle = state["bundle"].as_str().unwrap().to_string();
    assert!(Path::new(&bundle).join("config.json").exists());

    // Billed with the GPU: 2 GB of Tesla at 2.1 CU/GB-s, rounded up to the second.
    // The window is recorded at the freeze, which follows the last request by a moment.
    let w: serde_json::Value = wait_for("an invoke window", Duration::from_secs(10), || {
        let ledger = http(&f.addr, "GET", "/admin/ledger", &[], b"").text();
        ledger.lines().find(|l| l.contains("\"invoke\"")).map(|l| serde_json::from_str(l).unwrap())
    });
    assert_eq!(w["gpu_type"], "tesla", "{w}");
    assert!((w["cu"]["gpu"].as_f64().unwrap() - 2.0 * 2.1 * (w["billed_ms"].as_f64().unwrap() / 1000.0).ceil()).abs() < 1e-9, "{w}");

    f.stop_and_check_clean();
    let stopped: serde_json::Value = serde_json::from_str(&read_when(&rec.join("poststop-state"))).unwrap();
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    wait_for("the bundle to go", Duration::from_secs(10), || (!Path::new(&bundle).exists()).then_some(()));
}

/// A hook that fails fails the start with its output, and leaves nothing behind.
#[test]
fn a_failing_hook_fails_the_start_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let (host, major) = (fx.path(), free_local_major());
    fake_gpus(host, major);
    let cdi = host.join("cdi");
    std::fs::create_dir(&cdi).unwrap();
    std::fs::write(
        cdi.join("nvidia.yaml"),
        format!(
            "cdiVersion: \"0.6.0\"\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0\"\n    containerEdits:\n      deviceNodes: [{{path: /dev/nvidia0, hostPath: {}/gpu0}}]\n      hooks: [{{hookName: createContainer, path: /bin/sh, args: [sh, -c, 'echo no driver here >&2; exit 3']}}]\n",
            host.display()
        ),
    )
    .unwrap();
    let cache = fx.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", gpu_function("gpu", &oci, "all", ""));
    let mut f = Fcsup::serve_file(&yaml, &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()]);
    let r = f.invoke("gpu", "ok");
    let body = r.text();
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{body}");
    assert!(body.contains("createContainer hook") && body.contains("no driver here") && body.contains("exit status: 3"), "{body}");
    assert!(f.instances().is_empty(), "no instance stays");
    let bundles = Path::new("/run/fcsup").join(&f.cgroup_root).join("bundles");
    assert!(std::fs::read_dir(&bundles).map(|d| d.count()).unwrap_or(0) == 0, "no bundle stays in {}", bundles.display());
    f.stop_and_check_clean();
}

/// Without a CDI spec for the GPUs, NVIDIA's legacy `nvidia-container-runtime-hook prestart`
/// runs as runc runs it: the state on stdin, cwd the bundle, whose `config.json` carries
/// `NVIDIA_VISIBLE_DEVICES` (the granted GPUs) and an absolute `root.path`.
#[test]
fn without_a_cdi_spec_the_legacy_nvidia_hook_runs() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let rec = fx.path().join("legacy");
    let path = fake_tool(
        fx.path(),
        "nvidia-container-runtime-hook",
        &format!("echo \"$@\" > {r}.args\ncat > {r}.state\ncp config.json {r}.config\n", r = rec.display()),
    );
    let empty_cdi = fx.path().join("cdi");
    std::fs::create_dir(&empty_cdi).unwrap();
    let cache = fx.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", gpu_function("gpu", &oci, "[1]", ""));
    let mut f =
        Fcsup::serve_file_env(&yaml, &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", empty_cdi.to_str().unwrap()], &[("PATH", &path)]);
    let r = f.invoke("gpu", "ok");
    assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    let args = read_when(&rec.with_extension("args"));
    assert_eq!(args.trim(), "prestart", "{args}");
    let state: serde_json::Value = serde_json::from_str(&read_when(&rec.with_extension("state"))).unwrap();
    assert_eq!(state["pid"].as_i64(), f.instances()[0]["pid"].as_i64(), "{state}");
    let config: serde_json::Value = serde_json::from_str(&read_when(&rec.with_extension("config"))).unwrap();
    let env: Vec<&str> = config["process"]["env"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=1"), "{env:?}");
    assert_eq!(config["root"]["path"], "/code", "{config}");
    f.stop_and_check_clean();
}

/// FC's execute-instruction Initializer runs inside the instance (its PID namespace, root,
/// cgroup and user) once it listens and before its first request, once only, with its output
/// in the instance's log; a failing one fails the start with its status.
#[test]
fn the_execute_instruction_initializer_runs_once_inside_the_instance() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let cdi = fake_gpu_spec(fx.path(), "");
    let cache = fx.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let init = |code: u32| {
        format!("      instanceLifecycleConfig:\n        initializer:\n          command: [/app/fcsup-fixture, init-command, \"{code}\"]\n          timeout: 10\n")
    };
    let yaml = format!("edition: 3.0.0\nresources:\n{}{}", gpu_function("good", &oci, "[0]", &init(0)), gpu_function("bad", &oci, "[0]", &init(3)));
    let mut f = Fcsup::serve_file(&yaml, &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()]);
    for _ in 0..3 {
        let r = f.invoke("good", "show:/tmp/init-command.log");
        assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    }
    let text = f.invoke("good", "show:/tmp/init-command.log").text();
    let log = text.split("file=").nth(1).unwrap().split("\nenv ").next().unwrap().to_string();
    assert_eq!(log.lines().count(), 1, "run once, before the first request: {log}");
    let pid: u32 = log.split("pid=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(pid < 100, "in the instance's PID namespace (pid {pid}): {log}");
    assert!(log.contains("uid=0 ") && log.trim_end().ends_with("cgroup=0::/"), "as the function's root, in its cgroup namespace: {log}");
    let cgroup = f.instances()[0]["cgroup"].as_str().unwrap().to_string();
    assert!(usage_usec(&cgroup) > 0);
    wait_for("the command's output in the instance log", Duration::from_secs(5), || {
        let l = f.log_file("good");
        (l.contains("init command ran") && l.contains("FC Initialize End RequestId")).then_some(())
    });
    let r = f.invoke("bad", "ok");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{}", r.text());
    assert!(r.text().contains("exited with status 3"), "{}", r.text());
    f.stop_and_check_clean();
}

/// With `gpuHibernateAfter`, an idle GPU instance's CUDA processes are locked and
/// checkpointed while its cgroup is thawed, then it is frozen again; a request thaws it and
/// restores and unlocks them before it is sent (a fake `cuda-checkpoint` records each call and
/// whether the cgroup was frozen at that moment). The idle time after the checkpoint is billed
/// as the GPU-hibernated tier. A restore that fails fails the request clearly and replaces
/// the instance.
#[test]
fn an_idle_gpu_instance_hibernates_before_its_freeze_and_wakes_after_its_thaw() {
    if !privileged() {
        return;
    }
    let img = build_image();
    let fx = tempfile::tempdir().unwrap();
    let cdi = fake_gpu_spec(fx.path(), "");
    let rec = fx.path().join("cuda-checkpoint.log");
    let fail = fx.path().join("fail-restore");
    let path = fake_tool(
        fx.path(),
        "cuda-checkpoint",
        &format!(
            "pid=${{4:-$3}}\n[ \"$1\" = --get-state ] && pid=$3\ncg=$(grep '^0::' /proc/$pid/cgroup | cut -d: -f3)\nfrozen=$(grep '^frozen' \"{cg2}$cg/cgroup.events\" | cut -d' ' -f2)\necho \"$1 $2 pid=$pid frozen=$frozen\" >> {rec}\n[ \"$1\" = --get-state ] && echo running\n[ \"$2\" = restore ] && [ -e {fail} ] && {{ echo 'out of GPU memory' >&2; exit 2; }}\nexit 0\n",
            cg2 = cgroup2_mount().display(),
            rec = rec.display(),
            fail = fail.display()
        ),
    );
    let cache = fx.path().join("images");
    let oci = format!("oci:{}:app", img.layout.display());
    let yaml = format!(
        "edition: 3.0.0\nresources:\n{}",
        gpu_function("gpu", &oci, "[0]", "")
            .replace("        gpus: [0]\n", "        gpus: [0]\n        gpuHibernateAfter: 1\n        minInstances: 1\n")
    );
    let mut f =
        Fcsup::serve_file_env(&yaml, &["--image-cache", cache.to_str().unwrap(), "--cdi-spec-dir", cdi.to_str().unwrap()], &[("PATH", &path)]);
    let lines = || std::fs::read_to_string(&rec).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
    f.wait_line("the idle instance to hibernate", |l| l.contains("GPU hibernated"), Duration::from_secs(20));
    let checkpointed = lines();
    let cgroup = f.instances()[0]["cgroup"].as_str().unwrap().to_string();
    wait_frozen(&cgroup);
    for l in checkpointed.iter().filter(|l| l.starts_with("--action")) {
        assert!(l.ends_with("frozen=0"), "checkpointed while thawed (CRIU's order): {checkpointed:?}");
    }
    let pids = checkpointed.iter().filter(|l| l.starts_with("--action checkpoint")).count();
    assert!(pids >= 1, "{checkpointed:?}");
    // A request wakes it: restore and unlock after the thaw, before the answer.
    let r = f.invoke("gpu", "ok");
    assert_eq!(r.status, 200, "{} {}", r.header("x-fc-error-type"), r.text());
    let after = lines();
    let woken: Vec<&String> = after.iter().skip(checkpointed.len()).filter(|l| l.starts_with("--action")).collect();
    assert_eq!(woken.iter().filter(|l| l.starts_with("--action restore")).count(), pids, "{after:?}");
    assert_eq!(woken.iter().filter(|l| l.starts_with("--action unlock")).count(), pids, "{after:?}");
    assert!(woken.iter().all(|l| l.ends_with("frozen=0")), "restored after the thaw: {after:?}");
    let first_restore = woken.iter().position(|l| l.starts_with("--action restore")).unwrap();
    assert!(woken[..first_restore].iter().all(|l| !l.starts_with("--action unlock")), "restore before unlock: {after:?}");
    // The hibernated idle time is its own tier in the ledger.
    wait_for("a gpu-hibernated idle record", Duration::from_secs(10), || {
        let ledger = http(&f.addr, "GET", "/admin/ledger", &[], b"").text();
        ledger.contains("\"idle_tier\":\"gpu-hibernated\"").then_some(())
    });
    // Hibernated again, and this time its GPU memory cannot come back: a clear error, and
    // the instance is replaced.
    std::fs::write(&fail, "").unwrap();
    let hibernations = || f.output().iter().filter(|l| l.contains("GPU hibernated")).count();
    wait_for("a second hibernation", Duration::from_secs(20), || (hibernations() >= 2).then_some(()));
    let old = f.instances()[0]["id"].as_str().unwrap().to_string();
    let r = f.invoke("gpu", "ok");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("GPU state could not be restored") && r.text().contains("out of GPU memory"), "{}", r.text());
    std::fs::remove_file(&fail).unwrap();
    wait_for("the broken instance replaced", Duration::from_secs(20), || {
        let i = f.instances();
        (i.len() == 1 && i[0]["id"] != old.as_str()).then_some(())
    });
    assert_eq!(f.invoke("gpu", "ok").status, 200);
    f.stop_and_check_clean();
}
