//! Privileged tests of Async invocations that survive fcsup (issue 15, point 4): tasks queued or
//! running when fcsup is killed with SIGKILL run after its restart, their statuses intact;
//! destinations get FC's record; an event past its max age after a restart expires.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ASYNC: (&str, &str) = ("x-fc-invocation-type", "Async");

/// `GET /admin/async/{id}`.
fn status(f: &Fcsup, id: &str) -> serde_json::Value {
    let r = http(&f.addr, "GET", &format!("/admin/async/{id}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_status(f: &Fcsup, id: &str, done: &[&str], timeout: Duration) -> serde_json::Value {
    wait_for(&format!("async task {id} to end {done:?}"), timeout, || {
        let v = status(f, id);
        done.contains(&v["status"].as_str().unwrap()).then_some(v)
    })
}

/// Submits an Async invocation under task id `id`; returns its request id.
fn submit(f: &Fcsup, function: &str, id: &str, body: &str) -> String {
    let r = f.invoke_with(function, body, &[ASYNC, ("x-fc-async-task-id", id)]);
    assert_eq!(r.status, 202, "{}", r.text());
    r.header("x-fc-request-id").to_string()
}

/// How many times the fixture started request `request_id` (its `EVENT invoke` lines).
fn runs(f: &Fcsup, request_id: &str) -> usize {
    let needle = format!("id={request_id}");
    f.output().iter().filter(|l| l.contains("EVENT invoke") && l.contains(&needle)).count()
}

/// One instance at a time: Async tasks wait for the one before them.
fn one_at_a_time(name: &str, extra: &str) -> String {
    fixture_props(name, &format!("fcsup: {{maxInstances: 1}}\n{extra}"))
}

#[test]
fn tasks_queued_or_running_at_a_sigkill_run_after_the_restart() {
    let Some(mut f) = serve_if_privileged(&one_at_a_time("work", "")) else { return };
    // The first task holds the only slot for 4 s; the other three have not started when the
    // kill comes.
    let slow = submit(&f, "work", "slow", r#"{"op":"sleep","ms":4000}"#);
    let quick: Vec<(String, String)> =
        (0..3).map(|i| (format!("quick-{i}"), submit(&f, "work", &format!("quick-{i}"), r#"{"op":"sleep","ms":10}"#))).collect();
    f.wait_line("the slow task to start", |l| l.contains("EVENT invoke") && l.contains(&slow), Duration::from_secs(30));
    let before = status(&f, "slow");
    assert_eq!((before["status"].as_str(), before["attempts"].as_u64()), (Some("Running"), Some(1)), "{before}");
    for (id, _) in &quick {
        assert_eq!(status(&f, id)["status"], "Enqueued");
    }
    f.kill_hard();
    f.restart_after_kill();

    // Every status survived (the queries answer before the tasks are done), and every task runs.
    for (id, _) in &quick {
        let s = status(&f, id);
        assert!(["Enqueued", "Running", "Succeeded"].contains(&s["status"].as_str().unwrap()), "{s}");
    }
    let s = wait_status(&f, "slow", &["Succeeded", "Failed"], Duration::from_secs(60));
    assert_eq!(s["status"], "Succeeded", "{s}");
    assert_eq!(s["submitted"], before["submitted"], "the arrival time is the first one");
    assert_eq!(s["requestId"].as_str(), Some(slow.as_str()));
    // At least once: the attempt the kill cut short runs again, so the slow task ran twice.
    assert_eq!(s["attempts"], 2, "{s}");
    assert_eq!(runs(&f, &slow), 2);
    for (id, rid) in &quick {
        let s = wait_status(&f, id, &["Succeeded", "Failed"], Duration::from_secs(30));
        assert_eq!((s["status"].as_str(), s["attempts"].as_u64()), (Some("Succeeded"), Some(1)), "{s}");
        // Never started before the kill: exactly once.
        assert_eq!(runs(&f, rid), 1, "{id}");
    }
    // The database is the operator's only: 0600 in a directory of the test.
    use std::os::unix::fs::PermissionsExt;
    let db = f.dir.path().join("async.db");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    f.stop_and_check_clean();
}

#[test]
fn a_graceful_stop_keeps_unfinished_tasks_for_the_next_start() {
    let Some(mut f) = serve_if_privileged(&one_at_a_time("later", "")) else { return };
    let slow = submit(&f, "later", "slow", r#"{"op":"sleep","ms":3000}"#);
    let next = submit(&f, "later", "next", r#"{"op":"sleep","ms":10}"#);
    f.wait_line("the slow task to start", |l| l.contains("EVENT invoke") && l.contains(&slow), Duration::from_secs(30));
    f.restart();
    for (id, rid) in [("slow", &slow), ("next", &next)] {
        let s = wait_status(&f, id, &["Succeeded", "Failed", "Stopped"], Duration::from_secs(60));
        assert_eq!(s["status"], "Succeeded", "{s}");
        assert!(runs(&f, rid) >= 1);
    }
    f.stop_and_check_clean();
}

fn echo_props(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/echo");
    format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 512\n      timeout: 10\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        dir.display()
    )
}

/// The record the destination function received for task `id` (the destination task's result).
fn record_of(f: &Fcsup, id: &str) -> serde_json::Value {
    let s = status(f, id);
    let dest = s["destinationTaskId"].as_str().unwrap_or_else(|| panic!("no destination task: {s}")).to_string();
    let d = wait_status(f, &dest, &["Succeeded", "Failed"], Duration::from_secs(30));
    assert_eq!((d["status"].as_str(), d["function"].as_str()), (Some("Succeeded"), Some("sink")), "{d}");
    serde_json::from_str(d["result"].as_str().unwrap()).unwrap()
}

#[test]
fn destinations_receive_fcs_record_on_success_and_after_the_retries() {
    let arn = "acs:fc:cn-hangzhou:1234567890:functions/sink";
    let extra = format!(
        "asyncInvokeConfig:\n  maxAsyncRetryAttempts: 1\n  destinationConfig:\n    onSuccess: {{destination: \"{arn}\"}}\n    onFailure: {{destination: \"{arn}\"}}"
    );
    let Some(mut f) = serve_if_privileged(&format!("{}{}", fixture_props("src", &extra), echo_props("sink"))) else { return };

    let body = r#"{"op":"sleep","ms":1}"#;
    let ok = submit(&f, "src", "ok", body);
    let s = wait_status(&f, "ok", &["Succeeded", "Failed"], Duration::from_secs(30));
    assert_eq!(s["status"], "Succeeded", "{s}");
    let rec = record_of(&f, "ok");
    assert_eq!(rec["requestContext"]["requestId"].as_str(), Some(ok.as_str()), "{rec}");
    assert_eq!(rec["requestContext"]["functionArn"], "acs:fc:cn-hangzhou:1234567890:functions/src");
    assert_eq!(rec["requestContext"]["condition"], "");
    assert_eq!(rec["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(rec["requestPayload"], body);
    assert_eq!(rec["responseContext"]["statusCode"], 200);
    assert_eq!(rec["responseContext"]["functionError"], "");
    let answer: serde_json::Value = serde_json::from_str(rec["responsePayload"].as_str().unwrap()).unwrap();
    assert!(answer["pid"].is_number(), "the function's answer: {rec}");
    assert!(rec["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{rec}");

    // A function error, retried once, then the failure record.
    let bad = r#"{"op":"fail"}"#;
    let failed = submit(&f, "src", "bad", bad);
    let s = wait_status(&f, "bad", &["Succeeded", "Failed"], Duration::from_secs(30));
    assert_eq!((s["status"].as_str(), s["attempts"].as_u64()), (Some("Failed"), Some(2)), "{s}");
    let rec = record_of(&f, "bad");
    assert_eq!(rec["requestContext"]["requestId"].as_str(), Some(failed.as_str()), "{rec}");
    assert_eq!(rec["requestContext"]["condition"], "UnhandledInvocationError");
    assert_eq!(rec["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(rec["requestPayload"], bad);
    assert_eq!(rec["responseContext"]["statusCode"], 200, "FC's status for a function error");
    assert_eq!(rec["responsePayload"], r#"{"error": "handled failure"}"#);
    // The sink saw each record once.
    let echoes = f.output().iter().filter(|l| l.contains("ECHO ") && l.contains("requestContext")).count();
    assert_eq!(echoes, 2);
    f.stop_and_check_clean();
}

#[test]
fn an_event_past_its_max_age_after_a_restart_expires_unrun() {
    let Some(mut f) = serve_if_privileged(&one_at_a_time("aging", "asyncInvokeConfig: {maxAsyncEventAgeInSeconds: 3}")) else { return };
    let slow = submit(&f, "aging", "slow", r#"{"op":"sleep","ms":2000}"#);
    let waiting = submit(&f, "aging", "waiting", r#"{"op":"sleep","ms":10}"#);
    let t = Instant::now();
    f.wait_line("the slow task to start", |l| l.contains("EVENT invoke") && l.contains(&slow), Duration::from_secs(30));
    f.kill_hard();
    // Down for longer than the events may live: the age counts from their arrival.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()) + Duration::from_millis(500));
    f.restart_after_kill();
    for id in ["slow", "waiting"] {
        let s = wait_status(&f, id, &["Succeeded", "Failed", "Expired"], Duration::from_secs(30));
        assert_eq!(s["status"], "Expired", "{s}");
        assert!(s["errorMessage"].as_str().unwrap().contains("maxAsyncEventAgeInSeconds"), "{s}");
    }
    assert_eq!(status(&f, "waiting")["attempts"], 0);
    assert_eq!(runs(&f, &waiting), 0, "an expired event never runs");
    assert_eq!(runs(&f, &slow), 1, "the attempt before the kill only");
    f.stop_and_check_clean();
}

#[test]
fn changing_only_a_destination_keeps_the_instances() {
    let dest =
        |to: &str| format!("asyncInvokeConfig:\n  destinationConfig:\n    onSuccess: {{destination: \"acs:fc:cn-hangzhou:1:functions/{to}\"}}");
    let yaml = |to: &str| format!("edition: 3.0.0\nresources:\n{}{}{}", fixture_props("src", &dest(to)), echo_props("sink"), echo_props("other"));
    let Some(mut f) = privileged().then(|| Fcsup::serve_file(&yaml("sink"), &[])) else { return };
    let warm = f.invoke("src", r#"{"op":"sleep","ms":1}"#);
    assert_eq!(warm.status, 200, "{}", warm.text());
    let instance = warm.header("x-fc-instance-id").to_string();
    std::fs::write(f.file(), yaml("other")).unwrap();
    f.hangup();
    f.wait_line("the reload", |l| l.contains("reloaded") && l.contains("rescaled") && l.contains("src"), Duration::from_secs(10));
    submit(&f, "src", "moved", r#"{"op":"sleep","ms":1}"#);
    let s = wait_status(&f, "moved", &["Succeeded", "Failed"], Duration::from_secs(30));
    assert_eq!(s["status"], "Succeeded", "{s}");
    let to = s["destinationTaskId"].as_str().unwrap_or_else(|| panic!("no destination task: {s}")).to_string();
    let d = wait_status(&f, &to, &["Succeeded", "Failed"], Duration::from_secs(30));
    assert_eq!(d["function"], "other", "the record went to the old destination: {d}");
    let again = f.invoke("src", r#"{"op":"sleep","ms":1}"#);
    assert_eq!(again.header("x-fc-instance-id"), instance, "a destination change replaced the instance");
    f.stop_and_check_clean();
}
