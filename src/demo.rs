//! `fcsup demo`: serves the bundled examples (compiled into the binary, no file needed) and
//! walks through a cold start, the Initializer, invocations, the instance frozen between them
//! and thawed for the next, and PreStop at the end; then the same for a Python handler
//! function (FC's built-in runtime, `index.handler`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::client;
use crate::config::Config;
use crate::supervisor::{Options, Supervisor};

const S_YAML: &str = include_str!("../examples/s.yaml");
const HELLO_PY: &str = include_str!("../examples/hello/server.py");
const HELLO_HANDLER_PY: &str = include_str!("../examples/hello-handler/index.py");

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Front door address.
    pub listen: String,
    /// Stop after showing the first frozen instance and its thaw (for tests and CI).
    pub no_wait: bool,
    /// Supervisor options.
    pub supervisor: Options,
    /// The front door's limits and admin token.
    pub front_door: Arc<crate::api::FrontDoor>,
}

/// Writes the bundled examples to a fresh directory.
pub fn write_examples() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fcsup-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("hello"))?;
    std::fs::write(dir.join("s.yaml"), S_YAML)?;
    std::fs::write(dir.join("hello/server.py"), HELLO_PY)?;
    std::fs::create_dir_all(dir.join("hello-handler"))?;
    std::fs::write(dir.join("hello-handler/index.py"), HELLO_HANDLER_PY)?;
    Ok(dir)
}

fn say(s: impl AsRef<str>) {
    println!("\x1b[1m==> {}\x1b[0m", s.as_ref());
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the examples, listening or talking to the front door failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bundled s.yaml was refused (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The supervisor could not start.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// Reading the instance's cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A step did not show what it should have.
    #[error("{0}")]
    Step(&'static str),
}

/// Runs the demo until Ctrl-C (or to the end of the walk-through with `no_wait`).
pub async fn run(opts: DemoOptions, stop: impl std::future::Future<Output = ()>) -> Result<(), DemoError> {
    let dir = write_examples()?;
    let config = Config::load(&dir.join("s.yaml"))?;
    say(format!("serving the bundled examples 'hello' (custom runtime) and 'hello-py' (python3.10 handler) from {}", dir.display()));
    let listener = tokio::net::TcpListener::bind(&opts.listen).await?;
    let sup = Supervisor::start(&config, &opts.supervisor).await?;
    let addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::api::serve(listener, sup.clone(), opts.front_door.clone(), stop_rx.clone()));
    let admin = sup.take_admin_listener().map(|l| tokio::spawn(crate::api::serve_admin(l, sup.clone(), opts.front_door.clone(), stop_rx)));
    let result = match walk_through(&sup, &addr).await {
        Ok(()) => handler_walk_through(&sup, &addr).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        eprintln!("demo step failed: {e}");
    }
    if result.is_ok() && !opts.no_wait {
        say(format!("fcsup is serving on http://{addr}; try:"));
        println!("    curl -i -X POST http://{addr}/2023-03-30/functions/hello/invocations -d you");
        println!("    curl -i http://{addr}/http/hello/anything        # HTTP trigger");
        println!("    curl -i -X POST http://{addr}/2023-03-30/functions/hello-py/invocations -d you   # Python handler");
        println!("    curl --unix-socket {} http://fcsup/admin/instances   # admin: root only", sup.admin_socket.display());
        println!("  Ctrl-C stops every instance (PreStop first) and leaves nothing behind.");
        stop.await;
    }
    say("stopping: PreStop, SIGTERM, cgroup.kill, cgroup removed");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    sup.shutdown().await;
    let left = sup.launcher().cgroups().path().exists();
    say(if left { "WARNING: the cgroup root is still present" } else { "done: no instance, cgroup or mount is left" });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn invoke(addr: &str, body: &str, tail: bool) -> std::io::Result<client::Response> {
    invoke_fn(addr, "hello", body, tail).await
}

async fn invoke_fn(addr: &str, function: &str, body: &str, tail: bool) -> std::io::Result<client::Response> {
    let headers: &[(&str, &str)] = if tail { &[("x-fc-log-type", "Tail")] } else { &[] };
    client::request(addr, Method::POST, &format!("/2023-03-30/functions/{function}/invocations"), headers, Bytes::from(body.to_string())).await
}

fn show_tail(r: &client::Response) {
    if let Some(log) = r.headers.get("x-fc-log-result") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(log.as_bytes()).unwrap_or_default();
        say("its Tail log (x-fc-log-result, base64-decoded):");
        for line in String::from_utf8_lossy(&decoded).lines() {
            println!("    | {line}");
        }
    }
}

/// The handler's `ticks`.
fn ticks(r: &client::Response) -> Result<u64, DemoError> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|_| DemoError::Step("hello-py did not answer with JSON"))?;
    v["ticks"].as_u64().ok_or(DemoError::Step("hello-py's answer has no ticks"))
}

/// The Python handler function: pulled over FC's runtime API, frozen between invocations.
async fn handler_walk_through(sup: &Arc<Supervisor>, addr: &str) -> Result<(), DemoError> {
    say("a Python handler function (runtime python3.10, handler index.handler): cold start, its runtime asks fcsup for work over FC's runtime API, Initializer");
    let r = invoke_fn(addr, "hello-py", "world", false).await?;
    show(&r);
    let inst = sup.instance(r.header("x-fc-instance-id")).ok_or(DemoError::Step("the instance of hello-py's first call is gone"))?;
    let cg = inst.cgroup();
    cg.wait_for("frozen 1", |e| e.frozen).await?;
    let before = ticks(&r)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = invoke_fn(addr, "hello-py", "again", true).await?;
    show(&r);
    let after = ticks(&r)?;
    say(format!(
        "hello-py was frozen for 500 ms between the calls: its background thread (a tick every 10 ms) ticked {} times, not ~50",
        after.saturating_sub(before)
    ));
    show_tail(&r);
    cg.wait_for("frozen 1", |e| e.frozen).await?;
    say("hello-py frozen again");
    Ok(())
}

fn show(r: &client::Response) {
    println!(
        "    HTTP {}  instance {}  cold start {}  duration {} ms  cpu {} us",
        r.status.as_u16(),
        r.header("x-fc-instance-id"),
        r.header("x-fcsup-cold-start"),
        r.header("x-fc-invocation-duration"),
        r.header("x-fcsup-cpu-time-us")
    );
    println!("    body: {}", String::from_utf8_lossy(&r.body));
}

async fn walk_through(sup: &Arc<Supervisor>, addr: &str) -> Result<(), DemoError> {
    say("first invocation: cold start (cgroup, clone3 into namespaces, port ready, Initializer)");
    let r = invoke(addr, "world", false).await?;
    show(&r);
    let inst = sup.instance(r.header("x-fc-instance-id")).ok_or(DemoError::Step("the instance of the first call is gone"))?;
    let cg = inst.cgroup();
    let frozen = cg.wait_for("frozen 1", |e| e.frozen).await?;
    let before = cg.cpu_stat()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = cg.cpu_stat()?;
    say(format!(
        "between requests the instance is frozen: {}/cgroup.events says frozen {}; cpu.stat usage_usec {} -> {} over 500 ms",
        cg.path().display(),
        u8::from(frozen.frozen),
        before.usage_usec,
        after.usage_usec
    ));
    say("second invocation: thaw, proxy, PreFreeze, freeze (its background thread did not tick while frozen)");
    let r = invoke(addr, "again", true).await?;
    show(&r);
    show_tail(&r);
    cg.wait_for("frozen 1", |e| e.frozen).await?;
    say("frozen again");
    Ok(())
}
