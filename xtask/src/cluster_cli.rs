//! `cargo xtask cluster`: a one-machine fcsup cluster to try and measure (see README, "One-
//! machine cluster"); `--bench` measures it under load instead of waiting for Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use xtask::cluster::load::{self, Load, Sample};
use xtask::cluster::{Cluster, Spec};

const USAGE: &str = "cargo xtask cluster [--nodes N (3)] [--base-port P (9000)] [--functions s.yaml (examples/s.yaml)] \
[--drain-seconds S (0)] [--check-ms MS (200)] [--fcsup PATH] [--no-build] [--bench [--seconds S (10)] [--clients C (16)] [--json FILE]]";

#[derive(Debug)]
struct Opts {
    nodes: usize,
    port: u16,
    functions: PathBuf,
    drain_seconds: u64,
    check_ms: u64,
    fcsup: Option<PathBuf>,
    build: bool,
    bench: bool,
    seconds: f64,
    clients: usize,
    json: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        nodes: 3,
        port: 9000,
        functions: PathBuf::from("examples/s.yaml"),
        drain_seconds: 0,
        check_ms: 200,
        fcsup: None,
        build: true,
        bench: false,
        seconds: 10.0,
        clients: 16,
        json: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value; usage: {USAGE}"));
        match a.as_str() {
            "--nodes" => o.nodes = val()?.parse()?,
            "--base-port" => o.port = val()?.parse()?,
            "--functions" => o.functions = val()?.into(),
            "--drain-seconds" => o.drain_seconds = val()?.parse()?,
            "--check-ms" => o.check_ms = val()?.parse()?,
            "--fcsup" => o.fcsup = Some(val()?.into()),
            "--seconds" => o.seconds = val()?.parse()?,
            "--clients" => o.clients = val()?.parse()?,
            "--json" => o.json = Some(val()?.into()),
            "--no-build" => o.build = false,
            "--bench" => o.bench = true,
            "--help" | "-h" => bail!("usage: {USAGE}"),
            _ => bail!("unknown option {a}; usage: {USAGE}"),
        }
    }
    if o.clients == 0 || !(o.seconds > 0.0 && o.seconds < 3600.0) || o.nodes == 0 {
        bail!("bad option values; usage: {USAGE}");
    }
    Ok(o)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::os::raw::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let fcsup = match &o.fcsup {
        Some(p) => p.clone(),
        None => {
            if o.build {
                crate::run(Command::new("cargo").args(["build", "--release", "--bin", "fcsup", "--bin", "fcsup-init"]))?;
            }
            PathBuf::from("target/release/fcsup")
        }
    };
    let fcsup = std::fs::canonicalize(&fcsup).with_context(|| format!("no fcsup at {}", fcsup.display()))?;
    // Ctrl-C and SIGTERM end the wait below, so the cluster is torn down in order; the
    // children run in their own process groups and do not see the terminal's Ctrl-C.
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    if o.bench {
        return bench(&o, &fcsup);
    }
    let functions = std::fs::canonicalize(&o.functions).with_context(|| format!("no functions file {}", o.functions.display()))?;
    let mut spec = Spec::new(o.nodes, &fcsup, &functions);
    spec.port = o.port;
    spec.drain_seconds = o.drain_seconds;
    spec.check_ms = o.check_ms;
    let mut c = Cluster::start(spec)?;
    print_cluster(&c);
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("tearing down");
    c.teardown()?;
    println!("torn down: no namespace, link, cgroup, directory or process left");
    Ok(())
}

fn print_cluster(c: &Cluster) {
    println!("cluster {} is up ({} nodes); Ctrl-C tears it down", c.run(), c.nodes.len());
    println!("  front (HAProxy): http://{}  e.g. curl -X POST http://{}/2023-03-30/functions/NAME/invocations", c.front, c.front);
    println!("  etcd:            {}", c.etcd);
    for n in &c.nodes {
        println!(
            "  {}:           http://{}  netns {}, cgroup root {}, admin socket {}",
            n.name,
            n.addr,
            n.netns,
            n.cgroup_root,
            n.admin_socket.display()
        );
    }
    println!("  files:           {}", c.dir.display());
    let nodes: Vec<_> = c
        .nodes
        .iter()
        .map(|n| serde_json::json!({"name": n.name, "addr": n.addr, "pid": n.pid(), "netns": n.netns, "cgroup_root": n.cgroup_root, "admin_socket": n.admin_socket}))
        .collect();
    // One line for scripts.
    println!("FCSUP_CLUSTER {}", serde_json::json!({"front": c.front, "etcd": c.etcd, "dir": c.dir, "nodes": nodes}));
}

const BENCH_FUNCTIONS: usize = 8;

/// The bench's functions: the native fixture (`fcsup-fixture`, answers at once).
fn bench_functions(dir: &Path, fixture: &Path) -> Result<PathBuf> {
    let code = dir.join("code");
    std::fs::create_dir_all(&code)?;
    std::fs::copy(fixture, code.join("fcsup-fixture")).context("the fixture: build it (drop --no-build)")?;
    let mut y = String::from("edition: 3.0.0\nresources:\n");
    for k in 0..BENCH_FUNCTIONS {
        y += &format!(
            "  bench-{k}:\n    props:\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 10\n      instanceConcurrency: 50\n      \
             customRuntimeConfig: {{command: [/code/fcsup-fixture]}}\n      fcsup: {{idleTimeout: 3600, maxInstances: 4}}\n",
            code.display()
        );
    }
    let file = dir.join("s.yaml");
    std::fs::write(&file, y)?;
    Ok(file)
}

fn bench(o: &Opts, fcsup: &Path) -> Result<()> {
    if o.build && o.fcsup.is_none() {
        crate::run(Command::new("cargo").args(["rustc", "--release", "--bin", "fcsup-fixture", "--", "-C", "target-feature=+crt-static"]))?;
    }
    let fixture = fcsup.with_file_name("fcsup-fixture");
    let work = tempfile::Builder::new().prefix("fcsup-cluster-bench-").tempdir()?;
    let functions = bench_functions(work.path(), &fixture)?;
    let mut spec = Spec::new(o.nodes, fcsup, &functions);
    spec.port = o.port;
    spec.check_ms = o.check_ms;
    let mut c = Cluster::start(spec)?;
    print_cluster(&c);
    let path = "/2023-03-30/functions/bench-0/invocations".to_string();
    // The function's home node: the one HAProxy sends it to.
    let home = (0..20)
        .find_map(|_| {
            let mut conn = xtask::http::Conn::new(xtask::http::Target::Tcp(c.front.clone()), Duration::from_secs(10));
            conn.request("POST", &path, &[], b"").ok().filter(|r| r.status == 200).map(|r| r.header("x-fcsup-node").to_string())
        })
        .context("bench-0 does not answer through HAProxy")?;
    let home_i = c.nodes.iter().position(|n| n.name == home).unwrap_or(0);
    let run = |addr: &str, paths: &[String]| {
        let l = Load::start(addr, paths, b"", o.clients, Duration::ZERO);
        std::thread::sleep(Duration::from_secs_f64(o.seconds));
        l.finish()
    };
    let direct = run(&c.nodes[home_i].addr, std::slice::from_ref(&path));
    let front = run(&c.front, std::slice::from_ref(&path));
    // Every function: HAProxy spreads them over the nodes by name.
    let all: Vec<String> = (0..BENCH_FUNCTIONS).map(|k| format!("/2023-03-30/functions/bench-{k}/invocations")).collect();
    let spread = run(&c.front, &all);
    let mut per_node: Vec<(String, usize)> =
        c.nodes.iter().map(|n| (n.name.clone(), spread.iter().filter(|s| s.ok() && s.node == n.name).count())).collect();
    per_node.sort();
    let (rate_direct, rate_front, rate_spread) = (load::rate(&direct), load::rate(&front), load::rate(&spread));
    let failed = |s: &[Sample]| s.iter().filter(|s| !s.ok()).count();
    println!(
        "\nbench-0 (home {}), {} clients, {} s each:\n  straight to the node: {rate_direct:>8.0} requests/s ({} failed)\n  through HAProxy:      {rate_front:>8.0} requests/s ({} failed)",
        c.nodes[home_i].name,
        o.clients,
        o.seconds,
        failed(&direct),
        failed(&front)
    );
    println!(
        "  {BENCH_FUNCTIONS} functions through HAProxy: {rate_spread:>4.0} requests/s ({} failed), answered per node: {per_node:?}",
        failed(&spread)
    );
    let f = failover(&mut c, home_i, &path, o.clients)?;
    println!(
        "\nfailover: SIGKILL of {} under steady load ({} requests, {} clients pausing 2 ms):\n  HAProxy marked it down after {:.0} ms\n  \
         first answer from another node {:.0} ms after the kill\n  requests failed: {} ({} of them sent after HAProxy marked it down)\n  longest request around the kill: {:.0} ms",
        c.nodes[home_i].name, f.requests, o.clients, f.down_ms, f.moved_ms, f.failed, f.failed_after_down, f.longest_ms
    );
    let report = serde_json::json!({
        "nodes": o.nodes, "clients": o.clients, "seconds": o.seconds,
        "direct_rps": rate_direct, "haproxy_rps": rate_front,
        "direct_failed": failed(&direct), "haproxy_failed": failed(&front),
        "spread_rps": rate_spread, "spread_failed": failed(&spread), "spread_per_node": per_node, "check_ms": o.check_ms,
        "failover": {"down_ms": f.down_ms, "moved_ms": f.moved_ms, "failed": f.failed, "failed_after_down": f.failed_after_down, "requests": f.requests, "longest_ms": f.longest_ms},
    });
    if let Some(j) = &o.json {
        std::fs::write(j, serde_json::to_string_pretty(&report)?)?;
    }
    c.teardown()?;
    println!("\ntorn down: nothing left");
    Ok(())
}

#[derive(Debug)]
struct Failover {
    requests: usize,
    down_ms: f64,
    moved_ms: f64,
    failed: usize,
    failed_after_down: usize,
    longest_ms: f64,
}

/// Kills node `home` (SIGKILL) under steady load on `path`, whose home it is.
fn failover(c: &mut Cluster, home: usize, path: &str, clients: usize) -> Result<Failover> {
    let name = c.nodes[home].name.clone();
    let l = Load::start(&c.front, &[path.to_string()], b"", clients, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(2));
    let killed = l.t0.elapsed();
    c.kill_node(home)?;
    let down = c.wait_server(&name, "DOWN", Duration::from_secs(30))?.duration_since(l.t0);
    std::thread::sleep(Duration::from_secs(3));
    let s = l.finish();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let moved = s.iter().filter(|x| x.start >= killed && x.ok() && x.node != name).map(|x| x.end).min().unwrap_or_default();
    let around: Vec<&Sample> = s.iter().filter(|x| x.end >= killed && x.start <= down).collect();
    Ok(Failover {
        requests: s.len(),
        down_ms: ms(down.saturating_sub(killed)),
        moved_ms: ms(moved.saturating_sub(killed)),
        failed: s.iter().filter(|x| !x.ok()).count(),
        failed_after_down: s.iter().filter(|x| !x.ok() && x.start > down).count(),
        longest_ms: around.iter().map(|x| ms(x.end - x.start)).fold(0.0, f64::max),
    })
}
