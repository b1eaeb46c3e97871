//! The instance's shell against the recording kernel ([`super::fake`]): the lifecycle's
//! orders checked as they happen, without root.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::fake::*;
use super::*;
use crate::billing::Phase;

struct Fixture {
    instance: Arc<Instance<Recording>>,
    trace: Arc<Trace>,
    reporting: Arc<Reporting>,
    _code: tempfile::TempDir,
}

/// An instance of a function with `extra` props, on the recording kernel.
async fn fixture(extra: &str, script: Script) -> Fixture {
    let code = tempfile::tempdir().unwrap();
    let function = function(extra, code.path());
    let (kernel, trace) = recording(script);
    let reporting = reporting();
    let log = crate::logs::InstanceLog::new("f", "c-test", None, None);
    let spawned = Spawned { id: "c-test".into(), kernel, log, created: Instant::now(), start_trace: StartTrace::default(), runtime_api: None };
    let instance = Instance::new(Arc::new(function), spawned, reporting.clone(), false);
    Fixture { instance, trace, reporting, _code: code }
}

const HOOKS: &str =
    "instanceLifecycleConfig:\n  initializer: {handler: i, timeout: 1}\n  preFreeze: {handler: f, timeout: 1}\n  preStop: {handler: s, timeout: 1}\n";

/// Waits until the instance is in `state`.
async fn until(inst: &Instance<Recording>, state: State) {
    let mut rx = inst.life.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| l.state() == state)).await.expect("state reached").unwrap();
}

/// Runs one request on the instance (the freeze follows in the background).
async fn invoke(inst: &Arc<Instance<Recording>>, id: &str) -> Result<Reply, InvokeError> {
    inst.admit().expect("a free slot").invoke(call(id)).await
}

#[tokio::test]
async fn boot_runs_the_initializer_then_freezes() {
    let f = fixture(HOOKS, Script::default()).await;
    f.instance.boot().await.unwrap();
    assert_eq!(f.instance.state(), State::Frozen);
    assert_eq!(f.trace.events(), ["initialize", "freeze"], "no PreFreeze after the Initializer");
    let records = f.reporting.ledger().query(None, None, None);
    assert_eq!(records.len(), 1);
    assert!(records[0].cold_start && records[0].phase == Phase::Initialize);
    assert_eq!(records[0].cpu_us, FREEZE_BURN, "the start's window closes after the freeze");
}

#[tokio::test]
async fn a_request_is_billed_from_before_its_thaw_to_after_its_freeze() {
    let f = fixture(HOOKS, Script::default()).await;
    f.instance.boot().await.unwrap();
    f.trace.events.lock().unwrap().clear();
    let reply = invoke(&f.instance, "r1").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    until(&f.instance, State::Frozen).await;
    f.trace.assert_order(&["read", "thaw", "invoke", "invoked", "pre-freeze", "freeze", "read"]);
    let records = f.reporting.ledger().query(None, None, None);
    let window = records.iter().find(|r| r.request_ids == ["r1"]).expect("the request's window");
    assert_eq!(window.phase, Phase::PreFreeze, "PreFreeze is billed in the window it ends");
    assert_eq!(window.cpu_us, THAW_BURN + INVOKE_BURN + FREEZE_BURN, "every µs between the thaw and the freeze");
    let billed: u64 = records.iter().map(|r| r.cpu_us).sum();
    assert_eq!(billed, f.trace.cpu_usec.load(Ordering::SeqCst), "every µs of CPU is in exactly one record");
}

#[tokio::test]
async fn pre_freeze_runs_once_after_the_last_concurrent_request() {
    let script = Script { invoke_delay: Duration::from_millis(100), ..Script::default() };
    let f = fixture(&format!("instanceConcurrency: 3\n{HOOKS}"), script).await;
    f.instance.boot().await.unwrap();
    let tickets: Vec<_> = (0..3).map(|_| f.instance.admit().unwrap()).collect();
    assert!(f.instance.admit().is_none(), "three slots, no fourth");
    let runs = tickets.into_iter().enumerate().map(|(i, t)| tokio::spawn(t.invoke(call(&format!("r{i}")))));
    for r in runs {
        r.await.unwrap().unwrap();
    }
    until(&f.instance, State::Frozen).await;
    assert_eq!(f.trace.count("thaw"), 1, "one thaw for the three");
    assert_eq!(f.trace.count("pre-freeze"), 1);
    assert_eq!(f.trace.count("freeze"), 2, "the boot's and one after the last request");
    f.trace.assert_order(&["invoked", "invoked", "invoked", "pre-freeze", "freeze"]);
}

#[tokio::test]
async fn requests_that_waited_for_the_start_run_without_a_freeze_in_between() {
    let f = fixture("", Script::default()).await;
    let ticket = f.instance.admit().expect("a booting instance admits");
    let booting = tokio::spawn({
        let i = f.instance.clone();
        async move { i.boot().await.map(|_| ()) }
    });
    ticket.invoke(call("r1")).await.unwrap();
    booting.await.unwrap().unwrap();
    until(&f.instance, State::Frozen).await;
    assert_eq!(f.trace.events(), ["invoke", "invoked", "freeze"], "no freeze and thaw before the waiting request");
}

#[tokio::test]
async fn pre_stop_runs_before_sigterm_and_a_stop_runs_once() {
    let f = fixture(HOOKS, Script::default()).await;
    f.instance.boot().await.unwrap();
    f.instance.stop().await;
    f.trace.assert_order(&["freeze", "thaw", "pre-stop", "SIGTERM", "kill", "remove"]);
    assert_eq!(f.instance.state(), State::Dead);
    assert!(f.instance.admit().is_none());
    let seen = f.trace.events().len();
    f.instance.stop().await;
    assert_eq!(f.trace.events().len(), seen, "a second stop does nothing");
    let phases: Vec<Phase> = f.reporting.ledger().query(None, None, None).iter().map(|r| r.phase).collect();
    assert_eq!(phases, [Phase::Initialize, Phase::PreStop]);
}

#[tokio::test]
async fn a_function_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let script = Script { ignores_term: true, ..Script::default() };
    let f = fixture("fcsup: {stopGrace: 1}\n", script).await;
    f.instance.boot().await.unwrap();
    let t = Instant::now();
    f.instance.stop().await;
    assert!(t.elapsed() >= Duration::from_secs(1), "the grace period is given");
    f.trace.assert_order(&["SIGTERM", "kill", "remove"]);
    assert_eq!(f.instance.life().exit(), Some(137));
}

#[tokio::test]
async fn initializer_404_then_500_fails_two_requests_and_retires_the_instance() {
    let script = Script { init: Mutex::new([404, 500].into()), ..Script::default() };
    let f = fixture(HOOKS, script).await;
    // Request 1 waits for the start; the start's Initializer answers 404.
    let first = f.instance.admit().unwrap();
    f.instance.boot().await.expect("a 404 keeps the instance");
    let e = first.invoke(call("r1")).await.unwrap_err();
    assert!(matches!(e, InvokeError::Initialization(_)), "{e:?}");
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    // Request 2 retries it, thawing the instance first; it answers 500.
    until(&f.instance, State::Frozen).await;
    let e = invoke(&f.instance, "r2").await.unwrap_err();
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    f.trace.assert_order(&["initialize", "freeze", "thaw", "initialize"]);
    // The instance takes no request 3: its pool is told to retire it.
    assert!(f.instance.admit().is_none());
    let why = tokio::time::timeout(Duration::from_secs(1), f.instance.retiring()).await.unwrap();
    assert_eq!(why, Retire::Broken);
    assert_eq!(f.trace.count("pre-freeze"), 0, "no PreFreeze follows an Initializer");
}

#[tokio::test]
async fn initializer_400_then_success_serves_the_next_request() {
    let script = Script { init: Mutex::new([400].into()), ..Script::default() };
    let f = fixture(HOOKS, script).await;
    f.instance.boot().await.unwrap();
    let reply = invoke(&f.instance, "r1").await.expect("the retried Initializer succeeded, then the request ran");
    assert_eq!(reply.status, StatusCode::OK);
    f.trace.assert_order(&["initialize", "freeze", "thaw", "initialize", "invoke"]);
    invoke(&f.instance, "r2").await.unwrap();
    assert_eq!(f.trace.count("initialize"), 2, "once it succeeded it is not run again");
}

#[tokio::test]
async fn a_timed_out_initializer_fails_the_start_and_its_waiting_requests() {
    let script = Script { init_delay: Duration::from_millis(1500), ..Script::default() };
    let f = fixture(HOOKS, script).await;
    let waiting = f.instance.admit().unwrap();
    let e = f.instance.boot().await.unwrap_err();
    assert!(e.to_string().contains("timed out after 1 seconds"), "{e}");
    let e = waiting.invoke(call("r1")).await.unwrap_err();
    assert!(matches!(e, InvokeError::Initialization(_)), "{e:?}");
    assert!(f.instance.admit().is_none(), "a timeout is not retried");
    assert_eq!(f.instance.retiring().await, Retire::Broken);
}

#[tokio::test]
async fn an_exit_retires_the_instance_and_a_stop_skips_pre_stop() {
    let f = fixture(HOOKS, Script::default()).await;
    f.instance.boot().await.unwrap();
    f.instance.kernel().exit_with(139);
    assert_eq!(tokio::time::timeout(Duration::from_secs(1), f.instance.retiring()).await.unwrap(), Retire::Exited(139));
    assert!(f.instance.admit().is_none());
    f.instance.stop().await;
    assert_eq!(f.trace.count("pre-stop"), 0);
    assert_eq!(f.trace.count("SIGTERM"), 0);
    f.trace.assert_order(&["kill", "remove"]);
}

#[tokio::test]
async fn a_request_to_a_stopped_instance_is_refused() {
    let f = fixture("instanceConcurrency: 2\n", Script::default()).await;
    f.instance.boot().await.unwrap();
    let ticket = f.instance.admit().unwrap();
    f.instance.stop().await;
    let e = ticket.invoke(call("r1")).await.unwrap_err();
    assert!(matches!(e, InvokeError::Gone), "{e:?}");
    assert_eq!(f.trace.count("invoke"), 0);
}

#[tokio::test]
async fn a_request_that_arrives_during_pre_freeze_gets_a_window_and_a_pre_freeze_of_its_own() {
    let script = Script { pre_freeze_delay: Duration::from_millis(200), ..Script::default() };
    let f = fixture(&format!("instanceConcurrency: 2\n{HOOKS}"), script).await;
    f.instance.boot().await.unwrap();
    invoke(&f.instance, "r1").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !f.trace.events().iter().any(|e| e == "pre-freeze") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("PreFreeze began");
    invoke(&f.instance, "r2").await.unwrap();
    until(&f.instance, State::Frozen).await;
    f.trace.assert_order(&["invoked", "pre-freeze", "pre-freeze-done", "freeze", "thaw", "invoke", "invoked", "pre-freeze", "freeze"]);
    let windows: Vec<(Phase, Vec<String>)> =
        f.reporting.ledger().query(None, None, None).into_iter().filter(|r| !r.request_ids.is_empty()).map(|r| (r.phase, r.request_ids)).collect();
    assert_eq!(windows, [(Phase::PreFreeze, vec!["r1".to_string()]), (Phase::PreFreeze, vec!["r2".to_string()])]);
}
