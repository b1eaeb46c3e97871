//! Privileged tests of the scaling and failure semantics built so far (issue 4).
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

#[test]
fn max_instances_throttles_at_once() {
    let Some(mut f) = serve_if_privileged(&fixture_props("capped", "fcsup: {maxInstances: 2}")) else { return };
    let results = f.invoke_concurrently("capped", r#"{"op":"sleep","ms":800}"#, 3, Duration::from_millis(50));
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let throttled: Vec<&(Resp, Duration)> = results.iter().filter(|(r, _)| r.status == 429).collect();
    assert_eq!((ok, throttled.len()), (2, 1), "{results:?}");
    assert_eq!(throttled[0].0.json()["Code"], "ResourceExhausted");
    assert!(throttled[0].1 < Duration::from_millis(500), "429 must come at once, took {:?}", throttled[0].1);
    f.stop_and_check_clean();
}

#[test]
fn min_instances_are_ready_and_frozen_before_the_first_request() {
    let extra = "fcsup: {minInstances: 2}\ninstanceLifecycleConfig:\n  initializer: {handler: i, timeout: 5}";
    let Some(mut f) = serve_if_privileged(&fixture_props("warm", extra)) else { return };
    let insts = f.instances();
    assert_eq!(insts.len(), 2);
    for i in &insts {
        wait_frozen(i["cgroup"].as_str().unwrap());
    }
    assert_eq!(f.output().iter().filter(|l| l.contains("EVENT initialize")).count(), 2);
    let r = f.invoke("warm", "{}");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fcsup-cold-start"), "false");
    f.stop_and_check_clean();
}

#[test]
fn idle_instance_is_reclaimed_with_pre_stop() {
    let extra = "fcsup: {idleTimeout: 1}\ninstanceLifecycleConfig:\n  preStop: {handler: s, timeout: 3}";
    let Some(mut f) = serve_if_privileged(&fixture_props("reclaim", extra)) else { return };
    assert_eq!(f.invoke("reclaim", "{}").status, 200);
    let inst = f.instances()[0].clone();
    let cgroup = inst["cgroup"].as_str().unwrap().to_string();
    let done = Instant::now();
    f.wait_line("EVENT pre-stop", |l| l.contains("EVENT pre-stop"), Duration::from_secs(5));
    let after = done.elapsed();
    assert!(after >= Duration::from_millis(900), "reclaimed too early: {after:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&cgroup).exists() {
        assert!(Instant::now() < deadline, "cgroup {cgroup} not removed after reclaim");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(f.instances().is_empty());
    f.stop_and_check_clean();
}

#[test]
fn timeout_gives_fc_error_and_recycles_the_instance() {
    let Some(mut f) = serve_if_privileged(&fixture_props("slow", "").replace("timeout: 10", "timeout: 1")) else { return };
    assert_eq!(f.invoke("slow", "{}").status, 200);
    let first = f.instances()[0]["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let r = f.invoke("slow", r#"{"op":"sleep","ms":5000}"#);
    assert!(t.elapsed() < Duration::from_millis(1500), "timeout took {:?}", t.elapsed());
    assert_eq!(r.header("x-fc-error-type"), "UnhandledInvocationError");
    assert_eq!(r.json()["errorMessage"], "Function time out after 1 seconds");
    let r = f.invoke("slow", "{}");
    assert_eq!(r.status, 200);
    assert_ne!(r.header("x-fc-instance-id"), first, "the timed-out instance was recycled");
    f.stop_and_check_clean();
}

#[test]
fn retryable_initializer_failure_keeps_the_instance() {
    let extra = "environmentVariables: {FIXTURE_INIT_STATUS: '404,200'}\ninstanceLifecycleConfig:\n  initializer: {handler: i, timeout: 5}";
    let Some(mut f) = serve_if_privileged(&fixture_props("init404", extra)) else { return };
    let r = f.invoke("init404", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{}", r.text());
    let r2 = f.invoke("init404", "{}");
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert!(r2.header("x-fc-error-type").is_empty(), "{}", r2.text());
    assert_eq!(r.header("x-fc-instance-id"), r2.header("x-fc-instance-id"), "400/404: same instance, Initializer retried");
    f.stop_and_check_clean();

    let extra = "environmentVariables: {FIXTURE_INIT_STATUS: '500,200'}\ninstanceLifecycleConfig:\n  initializer: {handler: i, timeout: 5}";
    let mut f = Fcsup::serve(&fixture_props("init500", extra));
    let r = f.invoke("init500", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError");
    let r2 = f.invoke("init500", "{}");
    assert_ne!(r.header("x-fc-instance-id"), r2.header("x-fc-instance-id"), "5xx: the instance is replaced");
    f.stop_and_check_clean();

    // 404 on the first call keeps the instance; 500 on the retry ends it, and the next
    // request reaches a new instance (whose own Initializer answers 404 first again).
    let extra = "environmentVariables: {FIXTURE_INIT_STATUS: '404,500'}\ninstanceLifecycleConfig:\n  initializer: {handler: i, timeout: 5}";
    let mut f = Fcsup::serve(&fixture_props("init404500", extra));
    let r = f.invoke("init404500", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{}", r.text());
    let r2 = f.invoke("init404500", "{}");
    assert_eq!(r2.header("x-fc-error-type"), "InitializationError", "{}", r2.text());
    assert!(r2.text().contains("HTTP 500"), "{}", r2.text());
    assert_eq!(r.header("x-fc-instance-id"), r2.header("x-fc-instance-id"), "the 404 kept the instance for the retry");
    for _ in 0..3 {
        let r3 = f.invoke("init404500", "{}");
        assert_ne!(r3.status, 503, "a stopped instance stayed in the pool: {}", r3.text());
        assert_eq!(r3.header("x-fc-error-type"), "InitializationError", "{}", r3.text());
        assert_ne!(r3.header("x-fc-instance-id"), r.header("x-fc-instance-id"), "after the 500 a new instance serves");
    }
    f.stop_and_check_clean();
}

#[test]
fn tail_log_returns_the_request_output_between_fc_markers() {
    let Some(mut f) = serve_if_privileged(&fixture_props("tail", "")) else { return };
    let r = f.invoke_with("tail", r#"{"op":"print","lines":["first line","second line"]}"#, &[("x-fc-log-type", "Tail")]);
    assert_eq!(r.status, 200);
    let rid = r.header("x-fc-request-id").to_string();
    let log = base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.starts_with(&format!("FC Invoke Start RequestId: {rid}\n")), "{log}");
    assert!(log.contains("first line\nsecond line\n"), "{log}");
    assert!(log.contains(&format!("FC Invoke End RequestId: {rid}\n\nDuration: ")), "{log}");
    assert!(log.contains("Billed Duration: ") && log.contains("Memory Size: 1024 MB"), "{log}");
    f.stop_and_check_clean();
}

#[test]
fn server_listening_only_on_loopback_never_becomes_ready() {
    let extra = "environmentVariables: {FIXTURE_BIND: 127.0.0.1}\nfcsup: {startTimeout: 1}";
    let Some(mut f) = serve_if_privileged(&fixture_props("loopback", extra)) else { return };
    let t = Instant::now();
    let r = f.invoke("loopback", "{}");
    assert_eq!(r.header("x-fc-error-type"), "InitializationError", "{}", r.text());
    assert_eq!(r.json()["errorMessage"], "Function instance health check failed on port 9000 in 1 seconds");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    f.stop_and_check_clean();
}
