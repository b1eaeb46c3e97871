//! Privileged tests of issue 3: freezing really stops threads and children, hooks run when
//! FC runs them, instances are isolated, and nothing is left behind.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn frozen_instance_stops_background_thread_and_child_process() {
    let Some(mut f) = serve_if_privileged(&fixture_props("counter", "")) else { return };
    // Warm up: the first call is the cold start; let the child process start counting.
    let r = f.invoke("counter", r#"{"op":"hold","ms":300}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let held = r.json();
    let thread_in = held["after"]["thread"].as_i64().unwrap() - held["before"]["thread"].as_i64().unwrap();
    let child_in = held["after"]["child"].as_i64().unwrap() - held["before"]["child"].as_i64().unwrap();
    assert!(thread_in >= 100 && child_in >= 100, "inside a request both counters run: thread {thread_in}, child {child_in}");

    let cgroup = f.instances()[0]["cgroup"].as_str().unwrap().to_string();
    wait_frozen(&cgroup);
    let a = f.invoke("counter", r#"{"op":"counters"}"#).json();
    wait_frozen(&cgroup);
    std::thread::sleep(Duration::from_millis(500));
    let b = f.invoke("counter", r#"{"op":"counters"}"#).json();
    let thread_gap = b["thread"].as_i64().unwrap() - a["thread"].as_i64().unwrap();
    let child_gap = b["child"].as_i64().unwrap() - a["child"].as_i64().unwrap();
    // The instance is legitimately thawed for a few milliseconds around the gap (after the
    // handler read its counters, the 1-2 ms grace before the freeze (README, Function output)
    // and the freeze; from the thaw until the next read), so a few ticks happen around it;
    // 500 ms running would be about 450 ticks.
    assert!(thread_gap <= 6 && child_gap <= 6, "across a 500 ms frozen gap the counters moved: thread {thread_gap}, child {child_gap}");
    f.stop_and_check_clean();
}

#[test]
fn idle_instance_is_frozen_and_burns_no_cpu() {
    let Some(mut f) = serve_if_privileged(&fixture_props("idle", "")) else { return };
    let cgroup = f.warm("idle");
    assert!(events(&cgroup).contains("populated 1"));
    let before = usage_usec(&cgroup);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(usage_usec(&cgroup), before, "a frozen instance used CPU");
    assert_eq!(f.instances()[0]["state"], "frozen");
    f.stop_and_check_clean();
}

#[test]
fn hooks_run_once_in_fc_order() {
    let extra = "instanceConcurrency: 5
instanceLifecycleConfig:
  initializer: {handler: i, timeout: 5}
  preFreeze: {handler: f, timeout: 5}
  preStop: {handler: s, timeout: 5}";
    let Some(mut f) = serve_if_privileged(&fixture_props("hooks", extra)) else { return };
    let resps: Vec<Resp> = f.invoke_concurrently("hooks", r#"{"op":"sleep","ms":300}"#, 5, Duration::ZERO).into_iter().map(|(r, _)| r).collect();
    let ids: std::collections::HashSet<&str> = resps.iter().map(|r| r.header("x-fc-instance-id")).collect();
    assert!(resps.iter().all(|r| r.status == 200 && r.header("x-fc-error-type").is_empty()));
    assert_eq!(ids.len(), 1, "5 concurrent requests with concurrency 5 share one instance");
    let cgroup = f.instances()[0]["cgroup"].as_str().unwrap().to_string();
    wait_frozen(&cgroup);
    let out = f.stop_and_check_clean();
    let events: Vec<&String> = out.iter().filter(|l| l.contains("EVENT ")).collect();
    let pos = |pred: &dyn Fn(&str) -> bool| events.iter().position(|l| pred(l));
    let count = |pat: &str| events.iter().filter(|l| l.contains(pat)).count();
    assert_eq!(count("EVENT initialize"), 1, "{events:#?}");
    assert_eq!(count("EVENT pre-freeze"), 1, "pre-freeze runs once after the last of 5 requests: {events:#?}");
    assert_eq!(count("EVENT invoke"), 5);
    let init = pos(&|l| l.contains("EVENT initialize")).unwrap();
    let first_invoke = pos(&|l| l.contains("EVENT invoke")).unwrap();
    let last_invoke = events.iter().rposition(|l| l.contains("EVENT invoke")).unwrap();
    let freeze = pos(&|l| l.contains("EVENT pre-freeze")).unwrap();
    let stop = pos(&|l| l.contains("EVENT pre-stop")).expect("pre-stop ran");
    let term = pos(&|l| l.contains("EVENT sigterm")).expect("SIGTERM reached the function");
    assert!(init < first_invoke && last_invoke < freeze && freeze < stop && stop < term, "{events:#?}");
    assert!(events[freeze].contains("in_flight=0"), "pre-freeze ran while requests were in flight: {}", events[freeze]);
}

#[test]
fn two_instances_listen_on_the_same_port() {
    let Some(mut f) = serve_if_privileged(&fixture_props("pair", "")) else { return };
    let resps: Vec<Resp> = f.invoke_concurrently("pair", r#"{"op":"hold","ms":300}"#, 2, Duration::ZERO).into_iter().map(|(r, _)| r).collect();
    assert!(resps.iter().all(|r| r.status == 200), "{resps:?}");
    let ids: std::collections::HashSet<String> = resps.iter().map(|r| r.header("x-fc-instance-id").to_string()).collect();
    assert_eq!(ids.len(), 2, "concurrency 1: the second request needs a second instance on port 9000");
    let insts = f.instances();
    assert_eq!(insts.len(), 2);
    // Both still answer.
    for _ in 0..4 {
        assert_eq!(f.invoke("pair", "{}").status, 200);
    }
    f.stop_and_check_clean();
}

#[test]
fn instance_sees_fc_environment_and_a_private_root() {
    let Some(mut f) = serve_if_privileged(&fixture_props("env", "environmentVariables: {MY_VAR: hello}")) else { return };
    let r = f.invoke("env", r#"{"op":"env"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let env = &v["env"];
    let id = r.header("x-fc-instance-id");
    assert_eq!(env["FC_INSTANCE_ID"], id);
    assert_eq!(env["FC_FUNCTION_NAME"], "env");
    assert_eq!(env["FC_FUNC_CODE_PATH"], "/code/");
    assert_eq!(env["FC_SERVER_PORT"], "9000");
    assert_eq!(env["MY_VAR"], "hello");
    assert_eq!(v["cwd"], "/code");
    assert_eq!(v["hostname"], id);
    assert_eq!(v["code_writable"], false, "/code is mounted read-only");
    assert_ne!(v["pid"], 1, "the function runs under fcsup's init, not as PID 1");
    assert!(v["pid"].as_i64().unwrap() < 10, "the function is in its own PID namespace");
    let r = f.invoke("env", r#"{"op":"headers"}"#);
    let h = &r.json()["headers"];
    assert_eq!(h["x-fc-request-id"], r.header("x-fc-request-id"));
    assert_eq!(h["x-fc-instance-id"], r.header("x-fc-instance-id"));
    assert_eq!(h["x-fc-control-path"], "/invoke");
    assert_eq!(h["x-fc-function-name"], "env");
    assert_eq!(h["x-fc-function-memory"], "1024");
    assert_eq!(h["x-fc-function-type"], "0");
    // FC's response headers for the caller.
    assert!(r.header("x-fc-code-checksum").parse::<u64>().is_ok(), "{:?}", r.headers);
    assert_eq!(r.header("x-fc-invocation-service-version"), "LATEST");
    f.stop_and_check_clean();
}

#[test]
fn errors_come_in_fc_shapes() {
    let Some(mut f) =
        serve_if_privileged(&(fixture_props("crashy", "") + &fixture_props("missing", "").replace("/usr/bin/python3, server.py", "/code/nope")))
    else {
        return;
    };
    let r = f.invoke("nosuch", "{}");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["Code"], "FunctionNotFound");
    assert!(!r.header("x-fc-request-id").is_empty());

    let r = f.invoke("crashy", r#"{"op":"exit","code":3}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError");
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.starts_with("Process exited unexpectedly before completing request (duration: "), "{msg}");
    let r = f.invoke("crashy", "{}");
    assert_eq!(r.status, 200, "the next request gets a new instance: {}", r.text());
    assert!(r.header("x-fc-error-type").is_empty());

    let r = f.invoke("crashy", r#"{"op":"fail"}"#);
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "404 from /invoke is a function error");

    let r = f.invoke("missing", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError");
    assert!(r.text().contains("the file /code/nope is not exist"), "{}", r.text());
    f.stop_and_check_clean();
}

#[test]
fn http_trigger_passes_the_request_through() {
    let Some(mut f) = serve_if_privileged(&fixture_props("web", "")) else { return };
    let r = http(&f.addr, "GET", "/http/web/some/path?x=1", &[], b"");
    assert_eq!(r.status, 201, "the function's status passes through: {}", r.text());
    assert_eq!(r.json()["path"], "/some/path?x=1");
    assert!(!r.header("x-fc-request-id").is_empty());
    assert!(!r.header("x-fc-instance-id").is_empty());
    f.stop_and_check_clean();
}

#[test]
fn malformed_config_fails_at_start_naming_file_and_key() {
    if !privileged() {
        return;
    }
    let err = serve_failing(&format!("resources:\n{}", fixture_props("bad", "memorySize: 100").replace("      memorySize: 1024\n", "")), &[]);
    assert!(err.contains("s.yaml") && err.contains("resources.bad.props.memorySize") && err.contains("multiple of 64"), "{err}");
}

#[test]
fn demo_runs_to_a_frozen_instance() {
    if !privileged() {
        return;
    }
    let root = format!("fcsup-test-demo-{}", uuid::Uuid::new_v4().simple());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["demo", "--no-wait", "--listen", "127.0.0.1:0", "--cgroup-root", &root])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("says frozen 1"), "{stdout}");
    assert!(stdout.contains("PreStop"), "{stdout}");
    assert!(stdout.contains("no instance, cgroup or mount is left"), "{stdout}");
}

/// The CPU quota an instance runs under after it was frozen and thawed: its cgroup2
/// `cpu.max` on unified hosts, its v1 `cpu.cfs_quota_us` on hybrid ones.
fn cpu_quota_of(pid: i64, v2_cgroup: &str) -> String {
    if let Ok(max) = std::fs::read_to_string(std::path::Path::new(v2_cgroup).join("cpu.max")) {
        return max.split_whitespace().next().unwrap_or("").to_string();
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = cgroups.lines().find_map(|l| l.split_once(":cpu:").map(|(_, p)| p.to_string())).expect("a v1 cpu cgroup");
    std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{rel}/cpu.cfs_quota_us")).unwrap().trim().to_string()
}

#[test]
fn cpu_quota_is_back_after_each_freeze() {
    // The quota is lifted while freezing (throttled tasks cannot reach the freezer) and must
    // be in force again once frozen and while serving.
    let props = fixture_props("quota", "").replace("memorySize: 1024\n      cpu: 1", "memorySize: 1024\n      cpu: 0.5");
    let Some(mut f) = serve_if_privileged(&props) else { return };
    let cgroup = f.warm("quota");
    assert_eq!(f.invoke("quota", "{}").status, 200);
    wait_frozen(&cgroup);
    let pid = f.instances()[0]["pid"].as_i64().unwrap();
    assert_eq!(cpu_quota_of(pid, &cgroup), "50000", "0.5 vCPU = 50 ms per 100 ms period");
    f.stop_and_check_clean();
}

#[test]
fn failed_start_leaves_no_cgroup_root_or_runtime_dir() {
    if !privileged() {
        return;
    }
    let root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("f", ""));
    let err = serve_failing(&yaml, &["--listen", "127.0.0.1:0", "--cgroup-root", &root, "--log-dir", "/proc/fcsup-cannot-be-here"]);
    assert!(err.contains("cannot create the log directory /proc/fcsup-cannot-be-here"), "{err}");
    assert!(!cgroup2_mount().join(&root).exists(), "cgroup root left behind");
    assert!(!std::path::Path::new("/run/fcsup").join(&root).exists(), "runtime directory left behind");
}
