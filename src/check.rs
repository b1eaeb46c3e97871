//! `fcsup check`: what this host offers and what will and will not work.

use std::path::Path;

use caps::{CapSet, Capability};

use crate::cgroup::{CgroupRoot, Enforcement, Hierarchy, Mode};

/// One line of the report.
#[derive(Debug, serde::Serialize)]
pub struct Finding {
    /// `ok`, `warn` or `fail`.
    pub level: &'static str,
    /// What was probed.
    pub item: String,
    /// What was found, and what to do about it.
    pub detail: String,
}

fn f(level: &'static str, item: &str, detail: impl Into<String>) -> Finding {
    Finding { level, item: item.into(), detail: detail.into() }
}

/// Probes the host (creates and removes one probe cgroup under `cgroup_root`).
pub async fn run(mountinfo: &Path, cgroup_root: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    let new_enough = procfs::KernelVersion::from_str(kernel).is_ok_and(|v| v >= procfs::KernelVersion::new(5, 14, 0));
    out.push(f(
        if new_enough { "ok" } else { "fail" },
        "kernel",
        format!("{kernel} (fcsup needs 5.14+ for clone3 into cgroups, pidfds and cgroup.kill)"),
    ));
    let containers = procfs::KernelVersion::from_str(kernel).is_ok_and(|v| v >= procfs::KernelVersion::new(6, 13, 0));
    out.push(f(
        if containers { "ok" } else { "warn" },
        "custom containers",
        if containers {
            "the kernel assembles image roots from layer fds (6.13+)".to_string()
        } else {
            format!("{kernel} is older than 6.13: `runtime: custom-container` functions cannot start (overlayfs layers given as fds); custom runtimes are unaffected")
        },
    ));
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    let cap_eff = effective.iter().fold(0u64, |m, c| m | c.bitmask());
    let sys_admin = effective.contains(&Capability::CAP_SYS_ADMIN);
    out.push(f(
        if sys_admin { "ok" } else { "fail" },
        "capabilities",
        if sys_admin { format!("CAP_SYS_ADMIN present (CapEff {cap_eff:016x})") } else { "CAP_SYS_ADMIN missing: run fcsup as root".into() },
    ));
    for ns in ["pid", "mnt", "uts", "ipc", "net"] {
        let ok = Path::new(&format!("/proc/self/ns/{ns}")).exists();
        out.push(f(if ok { "ok" } else { "fail" }, &format!("namespace {ns}"), if ok { "available" } else { "missing from the kernel" }));
    }
    match user_namespaces() {
        Ok(()) => out.push(f("ok", "user namespaces", "available: each instance's root is an unprivileged id range on the host")),
        Err(why) => out.push(f("fail", "user namespaces", format!("{why}: fcsup refuses to start unless --insecure-instances"))),
    }
    match seccomp() {
        Ok(()) => out.push(f("ok", "seccomp", "filters available")),
        Err(why) => out.push(f("fail", "seccomp", format!("{why}: fcsup refuses to start unless --insecure-instances"))),
    }
    let hier = match Hierarchy::discover(mountinfo) {
        Ok(h) => h,
        Err(e) => {
            out.push(f("fail", "cgroup2", e.to_string()));
            return out;
        }
    };
    out.push(f(
        "ok",
        "cgroup mode",
        match hier.mode {
            Mode::Unified => format!("unified, cgroup2 at {}", hier.v2.display()),
            Mode::Hybrid => format!(
                "hybrid: cgroup2 at {} (freeze, kill, events, cpu.stat), v1 controllers {}",
                hier.v2.display(),
                hier.v1.keys().cloned().collect::<Vec<_>>().join(",")
            ),
        },
    ));
    let controllers = std::fs::read_to_string(hier.v2.join("cgroup.controllers")).unwrap_or_default();
    out.push(f("ok", "cgroup2 controllers", if controllers.trim().is_empty() { "(none)".into() } else { controllers.trim().to_string() }));
    let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let probe_root = format!("{}-check-{}", cgroup_root.trim_matches('/'), std::process::id());
    match CgroupRoot::open(&hier, &probe_root, &self_cg) {
        Ok(root) => {
            let caps = root.capabilities();
            for (name, e) in [("memory limit", caps.memory), ("pids limit", caps.pids), ("cpu limit", caps.cpu), ("device rules", caps.devices)] {
                let (lvl, d) = match e {
                    Enforcement::V2 => ("ok", "enforced through cgroup2".to_string()),
                    Enforcement::V1 => ("ok", "enforced through the v1 hierarchy (hybrid host)".to_string()),
                    Enforcement::No => ("warn", "NOT enforced on this host".to_string()),
                };
                out.push(f(lvl, name, d));
            }
            match root.create("probe", &Default::default()) {
                Ok(cg) => {
                    let freeze = cg.freeze().await.is_ok() && cg.thaw().await.is_ok();
                    out.push(f(
                        if freeze { "ok" } else { "fail" },
                        "freezer",
                        if freeze { "cgroup.freeze confirmed by cgroup.events" } else { "cgroup.freeze did not work" },
                    ));
                    let kill = cg.path().join("cgroup.kill").exists();
                    out.push(f(
                        if kill { "ok" } else { "warn" },
                        "cgroup.kill",
                        if kill { "available" } else { "missing: fcsup falls back to SIGKILL per pid" },
                    ));
                    let _ = cg.remove();
                }
                Err(e) => out.push(f("fail", "instance cgroup", e.to_string())),
            }
            let _ = root.remove();
        }
        Err(e) => out.push(f("fail", "cgroup root", e.to_string())),
    }
    let scratch = std::env::temp_dir().join(format!("fcsup-check-root-{}", std::process::id()));
    let root = std::fs::create_dir_all(&scratch).and_then(|()| crate::sandbox::probe_root(&scratch));
    let _ = std::fs::remove_dir(&scratch);
    out.push(match root {
        Ok(()) => f("ok", "instance root", "prepared once, copied per instance; code attached with open_tree/move_mount"),
        Err(e) => f("fail", "instance root", format!("cannot prepare it: {e} (needs open_tree and mount_setattr, Linux 5.12+)")),
    });
    // On a short-lived thread of its own: the policy is per thread.
    let fifo = std::thread::spawn(|| crate::sandbox::sys::sched_setscheduler(libc::SCHED_FIFO, 10).is_ok()).join().unwrap_or(false);
    out.push(if fifo {
        f("ok", "real-time priority", "SCHED_FIFO available for the control path")
    } else {
        f("warn", "real-time priority", "SCHED_FIFO refused: thaw latency will suffer under load (see --no-realtime)")
    });
    out.extend(devices(&crate::oci::cdi::DEFAULT_SPEC_DIRS.map(std::path::PathBuf::from)));
    out
}

/// GPUs, CDI specs, NVIDIA's hooks and `cuda-checkpoint`, and what a GPU function gets.
pub fn devices(cdi_dirs: &[std::path::PathBuf]) -> Vec<Finding> {
    let mut out = Vec::new();
    let gpus: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let info = std::fs::read_to_string(e.path().join("information")).unwrap_or_default();
                    let field = |k: &str| {
                        info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim_start_matches(':').trim().to_string()).unwrap_or_default()
                    };
                    format!("{} {} ({})", field("Model"), field("GPU UUID"), e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    out.push(if gpus.is_empty() {
        f("ok", "gpus", "no NVIDIA GPU (/proc/driver/nvidia/gpus): GPU functions cannot start; others run as usual")
    } else {
        f("ok", "gpus", gpus.join("; "))
    });
    let registry = crate::oci::cdi::Registry::load(cdi_dirs);
    let names = registry.device_names();
    let dirs = cdi_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    out.push(f("ok", "cdi devices", if names.is_empty() { format!("none in {dirs}") } else { names.join(", ") }));
    for e in registry.errors() {
        out.push(f("warn", "cdi spec", e.clone()));
    }
    let hook = crate::oci::nvidia::find_hook(std::env::var_os("PATH").as_deref());
    out.push(match &hook {
        Ok(p) => f("ok", "nvidia legacy hook", p.display().to_string()),
        Err(e) => f("ok", "nvidia legacy hook", e.to_string()),
    });
    let by_cdi = names.iter().any(|n| n.starts_with(crate::oci::grant::NVIDIA_GPU_KIND));
    out.push(f(
        if by_cdi || hook.is_ok() || gpus.is_empty() { "ok" } else { "warn" },
        "gpu functions",
        if by_cdi {
            "get their GPUs through the nvidia.com/gpu CDI spec (nodes, libraries, hooks)".to_string()
        } else if hook.is_ok() {
            "get their GPUs through nvidia-container-runtime-hook prestart (no nvidia.com/gpu CDI spec)".to_string()
        } else {
            "cannot start: no nvidia.com/gpu CDI spec (nvidia-ctk cdi generate) and no nvidia-container-runtime-hook".to_string()
        },
    ));
    let checkpoint =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("cuda-checkpoint")).find(|c| c.is_file())).unwrap_or_default();
    out.push(f(
        "ok",
        "cuda-checkpoint",
        match checkpoint {
            Some(p) => format!("{}: fcsup.gpuHibernateAfter can hand idle GPU memory back", p.display()),
            None => "not on PATH: fcsup.gpuHibernateAfter cannot hibernate (install NVIDIA's cuda-checkpoint, driver 570+)".to_string(),
        },
    ));
    out
}

/// Why this host cannot give instances a user namespace and a seccomp filter, if it cannot.
pub fn isolation_missing() -> Option<String> {
    let missing: Vec<String> = [user_namespaces(), seccomp()].into_iter().filter_map(Result::err).collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

fn user_namespaces() -> Result<(), String> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("user namespaces are not in this kernel".into());
    }
    match std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(0) => Err("user namespaces are disabled (user.max_user_namespaces = 0)".into()),
        _ => Ok(()),
    }
}

fn seccomp() -> Result<(), String> {
    match crate::sandbox::sys::seccomp_mode() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("seccomp is not in this kernel ({})", std::io::Error::from(e))),
    }
}
