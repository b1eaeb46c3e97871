//! Privileged tests of issue 16: each fixture does one risky thing that goes on after it
//! answers, and the freeze that follows reports exactly that (README, Freeze hazards).
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::*;

fn functions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions")
}

/// The custom-runtime hazard fixture, with `extra` YAML lines.
fn custom(name: &str, extra: &str) -> String {
    let mut s = format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 256\n      timeout: 10\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        functions().join("hazards").display()
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// A built-in runtime hazard fixture.
fn builtin(name: &str, runtime: &str, dir: &str) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      runtime: {runtime}\n      code: {}\n      handler: index.handler\n      memorySize: 256\n      timeout: 10\n",
        functions().join(dir).display()
    )
}

/// Invokes `op` and returns the hazard lines of the freeze that followed it (waiting until its
/// report is in), with the instance id.
fn hazards_after(f: &Fcsup, name: &str, op: &str) -> (Vec<String>, String) {
    // Reports nobody waits for come at most every 100 ms per instance (README, Freeze hazards).
    std::thread::sleep(fcsup::hazards::MIN_GATHER_GAP + Duration::from_millis(10));
    let r = f.invoke(name, op);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    let (rid, id) = (r.header("x-fc-request-id").to_string(), r.header("x-fc-instance-id").to_string());
    let report = wait_for("the freeze's report", Duration::from_secs(10), || {
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&f.admin("GET", &format!("/admin/instances/{id}/hazards?last=5"), b"").body).ok()?;
        list.into_iter().find(|r| r["request_id"] == rid.as_str())
    });
    let lines: Vec<String> =
        report["hazards"].as_array().unwrap().iter().map(|h| format!("FC Freeze Hazard RequestId: {rid}: {}", h["what"].as_str().unwrap())).collect();
    // The same lines, in the instance's log.
    for l in &lines {
        f.wait_line("the hazard in the instance log", |o| o.contains(l.as_str()), Duration::from_secs(5));
    }
    (lines, id)
}

#[test]
fn a_background_thread_still_computing_is_reported_with_its_name() {
    let Some(mut f) = serve_if_privileged(&custom("h", "")) else { return };
    f.warm("h");
    let (lines, id) = hazards_after(&f, "h", "thread");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(") of process") && lines[0].contains(" (spinner) ") && lines[0].contains("was running when frozen"), "{lines:#?}");
    assert!(lines[0].contains("ms CPU between the response and the freeze"), "{lines:#?}");
    // The next request learns how long it was frozen and how far its clocks jumped.
    std::thread::sleep(Duration::from_millis(300));
    let r = f.invoke("h", "clean");
    let rid = r.header("x-fc-request-id");
    let thaw = f.wait_line("the thaw line", |l| l.contains(&format!("FC Thaw RequestId: {rid}: frozen for ")), Duration::from_secs(5));
    let frozen_ms: f64 = thaw.split("frozen for ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(frozen_ms >= 250.0, "{thaw}");
    assert!(thaw.contains("the function's clocks jumped"), "{thaw}");
    let metrics = http(&f.addr, "GET", "/metrics", &[], b"").text();
    assert!(metrics.lines().any(|l| l.starts_with("fcsup_freeze_hazards_total{") && l.contains(r#"function="h",kind="thread""#)), "{metrics}");
    assert!(!f.admin("GET", &format!("/admin/instances/{id}/hazards"), b"").text().is_empty());
    // `fcsup report`'s source: per function, by kind.
    let summary = f.admin("GET", "/admin/hazards", b"").json();
    assert_eq!(summary[0]["function"], "h", "{summary}");
    assert!(summary[0]["by_kind"]["thread"].as_u64().unwrap() >= 1, "{summary}");
    f.stop_and_check_clean();
}

#[test]
fn bytes_unsent_to_a_peer_that_does_not_read_are_reported() {
    let Some(mut f) = serve_if_privileged(&custom("h", "")) else { return };
    f.warm("h");
    let (lines, _) = hazards_after(&f, "h", "socket");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    let unsent: u64 = l.split(": ").nth(2).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(unsent > 0 && l.contains(" bytes unsent on tcp 127.0.0.1:") && l.ends_with(" -> 127.0.0.1:7070 (ESTABLISHED)"), "{l}");
    f.stop_and_check_clean();
}

#[test]
fn a_child_process_still_running_is_reported() {
    let Some(mut f) = serve_if_privileged(&custom("h", "")) else { return };
    f.warm("h");
    let (lines, _) = hazards_after(&f, "h", "child");
    assert!(lines.iter().any(|l| l.contains(": child process ") && l.ends_with(" (sleep) still running")), "{lines:#?}");
    // The child may also be caught mid-start, running: that is about it too.
    assert!(lines.len() <= 2 && lines.iter().all(|l| l.contains("(sleep)")), "{lines:#?}");
    // Reported once: at the next freeze it is part of the instance. (It only runs while the
    // instance is thawed, so on a loaded host it may still be starting then, caught running
    // as a thread of its own: that line is about it too.)
    let (again, _) = hazards_after(&f, "h", "clean");
    assert!(again.iter().all(|l| !l.contains("child process") && l.contains("(sleep) was running")), "{again:#?}");
    f.stop_and_check_clean();
}

#[test]
fn a_clean_function_reports_nothing_across_100_invocations() {
    let Some(mut f) = serve_if_privileged(&custom("h", "")) else { return };
    f.warm("h");
    for _ in 0..100 {
        let (lines, _) = hazards_after(&f, "h", "clean");
        assert!(lines.is_empty(), "a false alarm: {lines:#?}");
    }
    assert!(!f.output().iter().any(|l| l.contains("FC Freeze Hazard")));
    f.stop_and_check_clean();
}

#[test]
fn fail_mode_turns_a_hazard_into_an_error_the_caller_sees() {
    let Some(mut f) = serve_if_privileged(&custom("h", "fcsup: {freezeHazards: fail}")) else { return };
    f.warm("h");
    let r = f.invoke_with("h", "child", &[("x-fc-log-type", "Tail")]);
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError", "{}", r.text());
    let body = r.json();
    assert_eq!(body["errorType"], "FreezeHazard", "{body}");
    assert!(body["errorMessage"].as_str().unwrap().contains("(sleep) still running"), "{body}");
    let tail = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap()).unwrap();
    assert!(tail.contains(&format!("FC Freeze Hazard RequestId: {}: child process ", r.header("x-fc-request-id"))), "{tail}");
    // A clean invocation still succeeds.
    let r = f.invoke("h", "clean");
    assert_eq!((r.status, r.header("x-fc-error-type"), r.text().as_str()), (200, "", "ok"));
    f.stop_and_check_clean();
}

#[test]
fn off_looks_at_nothing() {
    let Some(mut f) = serve_if_privileged(&custom("h", "fcsup: {freezeHazards: off}")) else { return };
    f.warm("h");
    let r = f.invoke("h", "thread");
    let id = r.header("x-fc-instance-id").to_string();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.admin("GET", &format!("/admin/instances/{id}/hazards"), b"").text().trim(), "[]");
    assert!(!f.output().iter().any(|l| l.contains("FC Freeze Hazard") || l.contains("FC Thaw")));
    f.stop_and_check_clean();
}

#[test]
fn a_python_asyncio_task_and_a_nodejs_timer_left_pending_are_reported_by_name() {
    let resources = format!("{}{}", builtin("py", "python3", "hazards-python"), builtin("js", "nodejs20", "hazards-node"));
    let Some(mut f) = serve_if_privileged(&resources) else { return };
    f.warm("py");
    f.warm("js");
    for name in ["py", "js"] {
        let (clean, _) = hazards_after(&f, name, "clean");
        assert!(clean.is_empty(), "{clean:#?}");
    }
    let (lines, _) = hazards_after(&f, "py", "asyncio");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(": pending in the runtime: asyncio task flush-metrics (flush_metrics)"), "{lines:#?}");
    let (lines, _) = hazards_after(&f, "js", "timer");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(": pending in the runtime: Node.js setTimeout flushMetrics (30000 ms)"), "{lines:#?}");
    f.stop_and_check_clean();
}
