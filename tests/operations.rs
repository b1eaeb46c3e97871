//! Privileged tests of what an operator relies on (issue 4): health checks that never thaw a
//! frozen instance, Async invocations, client hang-ups, configuration changes, log files.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn with_health(name: &str, extra: &str) -> String {
    let probe = "        healthCheckConfig: {httpGetUrl: /ready, periodSeconds: 1, failureThreshold: 2}\n";
    let cmd = "command: [/usr/bin/python3, server.py]\n";
    fixture_props(name, extra).replace(cmd, &format!("{cmd}{probe}"))
}

#[test]
fn frozen_instance_with_health_check_stays_healthy_and_frozen() {
    let Some(mut f) = serve_if_privileged(&with_health("probed", "")) else { return };
    let cgroup = f.warm("probed");
    let id = f.instances()[0]["id"].as_str().unwrap().to_string();
    let probes = || f.output().iter().filter(|l| l.contains("EVENT health")).count();
    assert_eq!(probes(), 1, "the start's health check runs once, after the Initializer");
    let usage = usage_usec(&cgroup);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(usage_usec(&cgroup), usage, "a frozen instance must not be thawed to be probed");
    assert!(events(&cgroup).contains("frozen 1"));
    assert_eq!(probes(), 1, "no probe reached the frozen instance");
    let r = f.invoke("probed", "{}");
    assert_eq!((r.status, r.header("x-fc-instance-id"), r.header("x-fcsup-cold-start")), (200, id.as_str(), "false"));
    f.stop_and_check_clean();
}

#[test]
fn unhealthy_instance_gets_no_new_requests() {
    let Some(mut f) = serve_if_privileged(&with_health("sickly", "")) else { return };
    // Probes run while this request keeps the instance thawed; two failures make it unhealthy.
    let r = f.invoke("sickly", r#"{"op":"sick","ms":3500}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.header("x-fc-instance-id").to_string();
    f.wait_line("unhealthy verdict", |l| l.contains("unhealthy"), Duration::from_secs(5));
    f.wait_line("the unhealthy instance to be retired", |l| l.contains("retiring unhealthy instance"), Duration::from_secs(5));
    let r = f.invoke("sickly", "{}");
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-fc-instance-id"), first, "the request went to the unhealthy instance");
    assert_eq!(r.header("x-fcsup-cold-start"), "true");
    f.stop_and_check_clean();
}

fn async_status(f: &Fcsup, id: &str, done: &[&str]) -> serde_json::Value {
    wait_for("async task to finish", Duration::from_secs(20), || {
        let r = http(&f.addr, "GET", &format!("/admin/async/{id}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        done.contains(&v["status"].as_str().unwrap()).then_some(v)
    })
}

#[test]
fn async_invocation_is_accepted_at_once_and_its_result_kept() {
    let Some(mut f) = serve_if_privileged(&fixture_props("later", "asyncInvokeConfig: {maxAsyncRetryAttempts: 1}")) else { return };
    let t = Instant::now();
    let r = f.invoke_with("later", r#"{"op":"sleep","ms":500}"#, &[("x-fc-invocation-type", "Async")]);
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(t.elapsed() < Duration::from_millis(400), "202 must not wait for the function: {:?}", t.elapsed());
    let id = r.header("x-fc-request-id").to_string();
    assert!(!id.is_empty());
    let s = async_status(&f, &id, &["Succeeded", "Failed"]);
    assert_eq!(s["status"], "Succeeded", "{s}");
    assert_eq!(s["attempts"], 1);
    let result: serde_json::Value = serde_json::from_str(s["result"].as_str().unwrap()).unwrap();
    assert!(result["pid"].is_number(), "{s}");

    // A function error is retried maxAsyncRetryAttempts times, with x-fc-retry-count.
    let r = f.invoke_with("later", r#"{"op":"fail"}"#, &[("x-fc-invocation-type", "Async"), ("x-fc-async-task-id", "task-1")]);
    assert_eq!((r.status, r.header("x-fc-async-task-id")), (202, "task-1"));
    let s = async_status(&f, "task-1", &["Succeeded", "Failed"]);
    assert_eq!((s["status"].as_str(), s["attempts"].as_u64()), (Some("Failed"), Some(2)), "{s}");
    assert_eq!(s["errorType"], "UnhandledInvocationError");
    let counts: Vec<String> = f.output().into_iter().filter(|l| l.contains("EVENT retry-count=")).collect();
    assert!(counts[0].contains("retry-count=0") && counts[1].contains("retry-count=1"), "{counts:?}");
    let r = f.invoke_with("later", "{}", &[("x-fc-invocation-type", "Async"), ("x-fc-async-task-id", "task-1")]);
    assert_eq!(r.status, 409, "a task id is used once");
    f.stop_and_check_clean();
}

#[test]
fn client_hang_up_replaces_the_instance() {
    let extra = "instanceLifecycleConfig:\n  preStop: {handler: s, timeout: 3}";
    let Some(mut f) = serve_if_privileged(&fixture_props("hangup", extra)) else { return };
    f.warm("hangup");
    let old = f.instances()[0]["id"].as_str().unwrap().to_string();
    let body = r#"{"op":"sleep","ms":5000}"#;
    let mut s = TcpStream::connect(&f.addr).unwrap();
    write!(s, "POST /2023-03-30/functions/hangup/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    f.wait_line("the request to arrive", |l| l.contains("EVENT invoke op=sleep"), Duration::from_secs(5));
    let hung_up = Instant::now();
    drop(s);
    f.wait_line("FC's cancel line", |l| l.contains("Error: Invocation canceled by client"), Duration::from_secs(3));
    f.wait_line("PreStop of the old instance", |l| l.contains("EVENT pre-stop"), Duration::from_secs(5));
    assert!(hung_up.elapsed() < Duration::from_secs(4), "the old instance ran the whole handler: {:?}", hung_up.elapsed());
    let insts = f.instances();
    assert_eq!(insts.len(), 1, "{insts:?}");
    assert_ne!(insts[0]["id"], old.as_str(), "a replacement starts when the client hangs up");
    let r = f.invoke("hangup", "{}");
    assert_eq!((r.status, r.header("x-fcsup-cold-start")), (200, "false"), "the replacement was already up");
    f.stop_and_check_clean();
}

#[test]
fn put_function_replaces_instances_after_their_requests() {
    let extra = "instanceLifecycleConfig:\n  preStop: {handler: s, timeout: 3}";
    let Some(mut f) = serve_if_privileged(&fixture_props("swap", extra)) else { return };
    f.warm("swap");
    let addr = f.addr.clone();
    let slow = std::thread::spawn(move || http(&addr, "POST", "/2023-03-30/functions/swap/invocations", &[], br#"{"op":"sleep","ms":1500}"#));
    f.wait_line("the slow request to run", |l| l.contains("EVENT invoke op=sleep"), Duration::from_secs(5));
    let props = format!(
        "code: {}\nmemorySize: 512\ntimeout: 10\nenvironmentVariables: {{VERSION: two}}\ncustomRuntimeConfig: {{command: [/usr/bin/python3, server.py]}}\n",
        fixture_dir().display()
    );
    let r = http(&f.addr, "PUT", "/admin/functions/swap", &[], props.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let old = slow.join().unwrap();
    assert_eq!(old.status, 200, "the request in flight finishes on the old instance: {}", old.text());
    f.wait_line("PreStop of the old instance", |l| l.contains("EVENT pre-stop"), Duration::from_secs(5));
    let r = f.invoke("swap", r#"{"op":"env"}"#);
    assert_eq!(r.json()["env"]["VERSION"], "two");
    assert_eq!(r.json()["env"]["FC_FUNCTION_MEMORY_SIZE"], "512");
    assert_ne!(r.header("x-fc-instance-id"), old.header("x-fc-instance-id"));
    let bad = props.replace("memorySize: 512", "memorySize: 100");
    let bad = http(&f.addr, "PUT", "/admin/functions/swap", &[], bad.as_bytes());
    assert_eq!(bad.status, 400);
    assert!(bad.json()["Message"].as_str().unwrap().contains("memorySize"), "{}", bad.text());
    f.stop_and_check_clean();
}

#[test]
fn sighup_replaces_only_changed_functions() {
    let yaml = format!("edition: 3.0.0\nresources:\n{}{}", fixture_props("same", ""), fixture_props("edited", ""));
    let Some(mut f) = privileged().then(|| Fcsup::serve_file(&yaml, &[])) else { return };
    let same = f.invoke("same", "{}").header("x-fc-instance-id").to_string();
    let edited = f.invoke("edited", "{}").header("x-fc-instance-id").to_string();
    let changed = yaml.replacen("memorySize: 1024", "memorySize: 2048", 2).replacen("memorySize: 2048", "memorySize: 1024", 1);
    std::fs::write(f.file(), changed).unwrap();
    f.hangup();
    f.wait_line("the reload", |l| l.contains("reloaded"), Duration::from_secs(10));
    assert_eq!(f.invoke("same", "{}").header("x-fc-instance-id"), same, "an unchanged function keeps its warm instance");
    let r = f.invoke("edited", r#"{"op":"env"}"#);
    assert_ne!(r.header("x-fc-instance-id"), edited);
    assert_eq!(r.json()["env"]["FC_FUNCTION_MEMORY_SIZE"], "2048");
    std::fs::write(f.file(), "resources: {broken").unwrap();
    f.hangup();
    f.wait_line("the refusal", |l| l.contains("reload refused"), Duration::from_secs(10));
    assert_eq!(f.invoke("same", "{}").status, 200, "a bad file changes nothing");
    f.stop_and_check_clean();
}

#[test]
fn function_log_file_has_output_and_hook_markers() {
    let extra = "instanceLifecycleConfig:\n  initializer: {handler: i, timeout: 5}";
    let Some(mut f) = serve_if_privileged(&fixture_props("logged", extra)) else { return };
    let r = f.invoke("logged", r#"{"op":"print","lines":["hello from the handler"]}"#);
    let rid = r.header("x-fc-request-id").to_string();
    f.stop_and_check_clean();
    let log = f.log_file("logged");
    assert!(log.contains("FC Initialize Start RequestId:") && log.contains("EVENT initialize"), "{log}");
    let line = log.lines().find(|l| l.contains("hello from the handler")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&rid), "the line is tagged with its request id: {line}");
}

#[test]
fn sighup_lowering_min_instances_stops_only_the_surplus() {
    let extra = "fcsup: {minInstances: 2}\ninstanceLifecycleConfig:\n  preStop: {handler: s, timeout: 3}";
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("kept", extra));
    let Some(mut f) = privileged().then(|| Fcsup::serve_file(&yaml, &[])) else { return };
    let before: Vec<String> = f.instances().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(before.len(), 2);
    std::fs::write(f.file(), yaml.replace("minInstances: 2", "minInstances: 1")).unwrap();
    f.hangup();
    f.wait_line("the reload", |l| l.contains("reloaded") && l.contains("rescaled"), Duration::from_secs(10));
    f.wait_line("PreStop of the surplus instance", |l| l.contains("EVENT pre-stop"), Duration::from_secs(5));
    let after = wait_for("one instance left", Duration::from_secs(5), || {
        let a = f.instances();
        (a.len() == 1).then_some(a)
    });
    assert!(before.iter().any(|id| after[0]["id"] == id.as_str()), "the kept instance is one of the two: {after:?}");
    assert_eq!(f.output().iter().filter(|l| l.contains("EVENT pre-stop")).count(), 1);
    f.stop_and_check_clean();
}
