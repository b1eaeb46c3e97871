//! The instance is a box: a hostile function is root only inside it, cannot reach host-wide
//! kernel settings, cannot take the supervisor down by running out of memory, and dies with a
//! supervisor that is killed outright.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The host pids of every process in the instance behind `cgroup`.
fn instance_pids(cgroup: &str) -> Vec<u64> {
    std::fs::read_to_string(Path::new(cgroup).join("cgroup.procs")).unwrap().lines().filter_map(|l| l.parse().ok()).collect()
}

fn status_field(pid: impl std::fmt::Display, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap_or_default().trim().to_string()
}

#[test]
fn function_is_root_only_inside_its_box() {
    let Some(mut f) = serve_if_privileged(&hostile_props("h", 512)) else { return };
    let r = f.invoke("h", r#"{"op":"probe"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json();
    // Root inside, as FC functions expect; no supplementary groups of the host's root.
    assert_eq!(p["uid"], 0, "{p}");
    assert_eq!(p["gid"], 0, "{p}");
    assert_eq!(p["groups"], serde_json::json!([]), "{p}");
    assert_eq!(p["seccomp"], "2", "a seccomp filter is installed: {p}");
    for key in ["write_printk_ratelimit", "write_core_pattern", "read_shadow", "read_kcore", "proc1_cmdline", "vsock"] {
        assert_eq!(p[key]["ok"], false, "{key} must fail: {p}");
    }
    assert_eq!(p["unshare_user_errno"], libc::EPERM, "no nested user namespace: {p}");
    assert_eq!(p["vsock_high_bits_errno"], libc::EPERM, "AF_VSOCK with high bits in the domain: {p}");
    assert_ne!(p["unshare_mount_errno"], 0, "{p}");
    assert_eq!(p["clone3_errno"], libc::ENOSYS, "clone3 is refused so that libc falls back to clone: {p}");
    assert_ne!(p["mount_errno"], 0, "{p}");
    assert_ne!(p["ptrace_errno"], 0, "the init cannot be traced: {p}");
    let cgroup = p["self_cgroup"].as_str().unwrap();
    assert!(cgroup.lines().all(|l| l.ends_with(":/")), "/proc/self/cgroup hides the supervisor's layout: {cgroup}");
    // What a function may do still works.
    for key in ["bind_80", "open_dev_stdout", "write_tmp"] {
        assert_eq!(p[key]["ok"], true, "{key} must work: {p}");
    }
    // From the host: the function runs as an unprivileged id of its own.
    let inst = f.instances().into_iter().next().expect("one instance");
    let host_uid = inst["host_uid"].as_u64().expect("host_uid in the admin view");
    assert!(host_uid > 65535, "{inst}");
    let function =
        instance_pids(inst["cgroup"].as_str().unwrap()).into_iter().find(|p| *p != inst["pid"].as_u64().unwrap()).expect("the function's process");
    let uids = status_field(function, "Uid");
    assert!(uids.split_whitespace().all(|u| u == host_uid.to_string()), "function's host uids {uids}, expected {host_uid}");
    assert_eq!(status_field(function, "Seccomp"), "2");
    // The init has left the supervisor's memory for the small fcsup-init, confined alike.
    let init = inst["pid"].as_u64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{init}/exe")).unwrap();
    assert!(exe.to_string_lossy().contains("fcsup-init"), "the init runs {}", exe.display());
    assert_eq!(status_field(init, "Seccomp"), "2");
    assert!(status_field(init, "Uid").split_whitespace().all(|u| u == host_uid.to_string()));
    assert_eq!(status_field(function, "NoNewPrivs"), "1");
    f.stop_and_check_clean();
}

#[test]
fn out_of_memory_kills_the_instance_not_the_supervisor() {
    let resources = hostile_props("hog", 128) + &hostile_props("bystander", 512);
    let Some(mut f) = serve_if_privileged(&resources) else { return };
    let fc_pid = f.pid();
    assert_eq!(f.invoke("bystander", r#"{"op":"echo"}"#).status, 200);
    let r = f.invoke("hog", r#"{"op":"alloc","mb":400}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "{}", r.text());
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.contains("memory limit of 128 MB"), "{msg}");
    // The supervisor and the other function live on; the hog gets a new instance.
    assert!(Path::new(&format!("/proc/{fc_pid}")).exists(), "fcsup died");
    assert_eq!(f.invoke("bystander", r#"{"op":"echo"}"#).status, 200);
    let again = f.invoke("hog", r#"{"op":"echo"}"#);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-fc-error-type"), "");
    let metrics = http(&f.addr, "GET", "/metrics", &[], b"").text();
    assert!(metrics.lines().any(|l| l.contains("FunctionOOMError") && l.contains("hog")), "{metrics}");
    // Many small processes, each smaller than the supervisor: the OOM killer must still pick
    // one of them (or the instance's small init), never the supervisor.
    let r = f.invoke("hog", r#"{"op":"dd_hogs","n":20,"bs_mb":8,"hold_s":1}"#);
    // The server itself may be the one killed (then FC's OOM error), or only some dd.
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(["", "UnhandledInvocationError"].contains(&r.header("x-fc-error-type")), "{}", r.text());
    assert!(Path::new(&format!("/proc/{fc_pid}")).exists(), "fcsup died of an instance's OOM");
    assert_eq!(f.invoke("bystander", r#"{"op":"echo"}"#).status, 200);
    assert_eq!(f.invoke("hog", r#"{"op":"echo"}"#).header("x-fc-error-type"), "");
    f.stop_and_check_clean();
}

#[test]
fn instances_die_with_a_killed_supervisor() {
    let Some(mut f) = serve_if_privileged(&fixture_props("fx", "")) else { return };
    let cgroup = f.warm("fx");
    let pids = instance_pids(&cgroup);
    assert!(pids.len() >= 2, "init, function and its child: {pids:?}");
    f.kill_hard();
    // The issue's bound: gone within two seconds, with no restart.
    wait_for("instance processes gone after fcsup's SIGKILL", Duration::from_secs(2), || {
        pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()).then_some(())
    });
    // A restart removes what is left (the empty cgroups), and a clean stop leaves nothing.
    f.restart_after_kill();
    f.stop_and_check_clean();
}

#[test]
fn function_logs_and_the_ledger_are_not_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let Some(mut f) = serve_if_privileged(&fixture_props("fx", "")) else { return };
    assert_eq!(f.invoke("fx", r#"{"op":"print","lines":["secret"]}"#).status, 200);
    let logs = f.dir.path().join("logs");
    wait_for("the function's log line", std::time::Duration::from_secs(5), || f.log_file("fx").contains("secret").then_some(()));
    for p in [logs.join("fx.log"), f.dir.path().join("ledger.jsonl")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{} is mode {mode:o}", p.display());
    }
    f.stop_and_check_clean();
}

#[test]
fn all_instances_together_cannot_take_every_pid_of_the_host() {
    let Some(mut f) = serve_if_privileged(&fixture_props("fx", "")) else { return };
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    // The root's pids.max, on cgroup2 or on the v1 pids hierarchy (hybrid hosts).
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = mi.lines().find(|l| l.contains(" - cgroup ") && l.split_whitespace().last().is_some_and(|o| o.split(',').any(|x| x == "pids")));
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let candidates: Vec<std::path::PathBuf> = match v1 {
        Some(l) => {
            let mnt = std::path::PathBuf::from(l.split(' ').nth(4).unwrap());
            let base =
                own.lines().find_map(|l| l.split(':').nth(1).filter(|c| c.split(',').any(|x| x == "pids")).and(l.split(':').nth(2))).unwrap_or("/");
            vec![mnt.join(base.trim_start_matches('/')).join(&f.cgroup_root), mnt.join(&f.cgroup_root)]
        }
        None => vec![f.root_path()],
    };
    let max = candidates.iter().find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok()).expect("the root's pids.max");
    let max: u64 = max.trim().parse().unwrap_or(u64::MAX);
    assert!(max < pid_max, "root pids.max {max} vs pid_max {pid_max}");
    f.stop_and_check_clean();
}

#[test]
fn a_huge_response_is_refused_not_held_by_the_supervisor() {
    let Some(mut f) = serve_if_privileged(&hostile_props("big", 512)) else { return };
    let rss = || status_field(f.pid(), "VmRSS").split_whitespace().next().unwrap().parse::<u64>().unwrap();
    let before = rss();
    let r = f.invoke("big", r#"{"op":"big_response","mb":400}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "{}", r.text());
    assert!(r.text().contains("larger than 32 MB"), "{}", r.text());
    // fcsup held at most about the limit, not the 400 MB the function sent.
    let grown_kib = rss().saturating_sub(before);
    assert!(grown_kib < 150 * 1024, "fcsup grew by {grown_kib} KiB");
    assert_eq!(f.invoke("big", r#"{"op":"echo"}"#).status, 200);
    f.stop_and_check_clean();
}
