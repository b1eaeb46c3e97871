//! Admission and membership against instances on the recording kernel, without root.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

use super::*;
use crate::instance::fake::{call, function, FakeLauncher, Script};

struct Fixture {
    pool: Arc<Pool<crate::instance::fake::Recording>>,
    launcher: Arc<FakeLauncher>,
    _code: tempfile::TempDir,
}

fn fixture(extra: &str, scripts: Vec<Script>, global: &Arc<GlobalCount>) -> Fixture {
    let code = tempfile::tempdir().unwrap();
    let launcher = Arc::new(FakeLauncher { scripts: std::sync::Mutex::new(scripts.into()), ..FakeLauncher::default() });
    let pool = Pool::new(launcher.clone(), Arc::new(function(extra, code.path())), global.clone());
    Fixture { pool, launcher, _code: code }
}

fn slow() -> Script {
    Script { invoke_delay: Duration::from_millis(200), ..Script::default() }
}

/// Waits until `cond` holds (the pool acts on what its instances report in the background).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn requests_fill_the_busiest_instance_before_a_cold_start() {
    let f = fixture("instanceConcurrency: 2\n", vec![slow(), slow()], &GlobalCount::new(10));
    let runs: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn({
                let pool = f.pool.clone();
                async move { pool.dispatch(call(&format!("r{i}"))).await }
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut cold = 0;
    for r in runs {
        let d = r.await.unwrap();
        assert!(matches!(d.result, Ok(ref r) if r.status == 200), "{:?}", d.result);
        cold += usize::from(d.cold_start);
        ids.push(d.instance_id.unwrap());
    }
    ids.sort();
    assert_eq!(ids, ["c-0", "c-0", "c-1"], "two share the first instance, the third starts another");
    assert_eq!(cold, 2, "a cold start is counted for the request that started the instance");
    let d = f.pool.dispatch(call("r3")).await;
    assert!(!d.cold_start, "a later request reuses a warm instance");
}

#[tokio::test]
async fn max_instances_and_the_supervisor_cap_answer_at_once_and_permits_come_back() {
    let global = GlobalCount::new(1);
    let a = fixture("", vec![slow()], &global);
    let b = fixture("", vec![], &global);
    let busy = tokio::spawn({
        let pool = a.pool.clone();
        async move { pool.dispatch(call("r1")).await }
    });
    until("the first instance admitted", || a.pool.instances().iter().any(|i| i.load() == 1)).await;
    let e = a.pool.dispatch(call("r2")).await.result.unwrap_err();
    assert!(matches!(e, InvokeError::Throttled(Exhausted::Supervisor { max: 1 })), "{e:?}");
    let e = b.pool.dispatch(call("r3")).await.result.unwrap_err();
    assert!(matches!(e, InvokeError::Throttled(Exhausted::Supervisor { .. })), "{e:?}");
    busy.await.unwrap().result.unwrap();
    a.pool.reclaim_all().await;
    assert!(a.pool.instances().is_empty());
    let d = b.pool.dispatch(call("r4")).await;
    assert!(matches!(d.result, Ok(ref r) if r.status == 200), "the stopped instance gave its place back: {:?}", d.result);

    let c = fixture("fcsup: {maxInstances: 1}\n", vec![slow()], &GlobalCount::new(10));
    let busy = tokio::spawn({
        let pool = c.pool.clone();
        async move { pool.dispatch(call("r1")).await }
    });
    until("the instance admitted", || c.pool.instances().iter().any(|i| i.load() == 1)).await;
    let e = c.pool.dispatch(call("r2")).await.result.unwrap_err();
    assert!(matches!(e, InvokeError::Throttled(Exhausted::Function { max: 1, .. })), "{e:?}");
    busy.await.unwrap().result.unwrap();
}

#[tokio::test]
async fn after_initializer_404_then_500_the_next_request_reaches_a_new_instance() {
    let hooks = "instanceLifecycleConfig:\n  initializer: {handler: i, timeout: 1}\n  preStop: {handler: s, timeout: 1}\n";
    let first = Script { init: std::sync::Mutex::new([404, 500].into()), ..Script::default() };
    let f = fixture(hooks, vec![first], &GlobalCount::new(10));
    let r1 = f.pool.dispatch(call("r1")).await;
    assert!(matches!(r1.result, Err(InvokeError::Initialization(_))), "{:?}", r1.result);
    let r2 = f.pool.dispatch(call("r2")).await;
    assert!(r2.result.as_ref().unwrap_err().to_string().contains("HTTP 500"), "{:?}", r2.result);
    assert_eq!(r1.instance_id, r2.instance_id, "the 404 kept the instance for a retry");
    let r3 = f.pool.dispatch(call("r3")).await;
    assert!(matches!(r3.result, Ok(ref r) if r.status == 200), "request 3 must reach a new instance: {:?}", r3.result);
    assert_ne!(r3.instance_id, r1.instance_id);
    let old = f.launcher.launched.lock().unwrap()[0].1.clone();
    until("the broken instance stopped", || old.count("remove") == 1).await;
    old.assert_order(&["initialize", "initialize", "pre-stop", "SIGTERM", "remove"]);
    assert_eq!(f.pool.instances().len(), 1);
}

#[tokio::test]
async fn an_instance_that_exits_leaves_the_pool_and_gives_back_its_place() {
    let global = GlobalCount::new(1);
    let f = fixture("", vec![], &global);
    f.pool.dispatch(call("r1")).await.result.unwrap();
    let gone = f.pool.instances()[0].clone();
    gone.kernel().exit_with(139);
    until("the exited instance left", || f.pool.instances().is_empty()).await;
    let d = f.pool.dispatch(call("r2")).await;
    assert!(matches!(d.result, Ok(ref r) if r.status == 200) && d.cold_start, "{:?}", d.result);
    assert_ne!(d.instance_id.as_deref(), Some(gone.id.as_str()));
}

#[tokio::test]
async fn a_client_that_goes_away_gets_its_instance_replaced() {
    let f = fixture("", vec![slow()], &GlobalCount::new(10));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut c = call("r1");
    c.canceled = Some(rx);
    let run = tokio::spawn({
        let pool = f.pool.clone();
        async move { pool.dispatch(c).await }
    });
    until("the request admitted", || f.pool.instances().iter().any(|i| i.load() == 1)).await;
    tx.send(()).unwrap();
    let d = run.await.unwrap();
    assert!(matches!(d.result, Err(InvokeError::Canceled)), "{:?}", d.result);
    let old = f.launcher.launched.lock().unwrap()[0].1.clone();
    until("the old instance stopped", || old.count("remove") == 1).await;
    until("a new instance took its place", || f.pool.instances().iter().any(|i| i.id == "c-1")).await;
    let d = f.pool.dispatch(call("r2")).await;
    assert_eq!(d.instance_id.as_deref(), Some("c-1"), "{:?}", d.result);
}

#[tokio::test]
async fn a_drained_pool_finishes_its_requests_then_stops_its_instances() {
    let f = fixture("", vec![slow()], &GlobalCount::new(10));
    let order = Arc::new(AsyncMutex::new(Vec::new()));
    let run = tokio::spawn({
        let (pool, order) = (f.pool.clone(), order.clone());
        async move {
            let d = pool.dispatch(call("r1")).await;
            order.lock().await.push("answered");
            d
        }
    });
    until("the request admitted", || f.pool.instances().iter().any(|i| i.load() == 1)).await;
    f.pool.close();
    assert!(matches!(f.pool.dispatch(call("r2")).await.result, Err(InvokeError::Gone)), "a closed pool starts nothing");
    run.await.unwrap().result.expect("the request in flight finishes");
    let trace = f.launcher.launched.lock().unwrap()[0].1.clone();
    f.pool.reclaim_all().await;
    assert!(f.pool.finished());
    trace.assert_order(&["invoked", "SIGTERM", "remove"]);
}
