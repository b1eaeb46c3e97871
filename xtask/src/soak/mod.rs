//! `cargo xtask soak`: runs the release fcsup under sustained load on its own cgroup root and
//! checks that nothing grows or leaks: instance lifecycles by the thousand (phase A), then
//! many concurrent clients whose answers must echo their own tokens (phase B), with the host
//! counted before and after and fcsup's RSS and fds sampled throughout.

mod probe;
mod report;
mod traffic;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use traffic::Admin;
use xtask::http;

/// The soak's own copy of the fixture; its `comm` finds any process of it left behind.
const FIXTURE_COMM: &str = "fcsoak-fixture";
/// fcsup keeps this many ledger records in memory (`billing/ledger.rs`); the soak fills the
/// ledger with as many before the start, so that buffer is full from the start and cannot
/// pass for growth.
const LEDGER_IN_MEMORY: usize = 100_000;
const PREFILL_FUNCTION: &str = "soak-prefill";
const ECHO_FUNCTIONS: [&str; 2] = ["echo1", "echo10"];

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub lifecycles: u64,
    pub minutes: f64,
    pub parallel: usize,
    pub clients: usize,
    pub json: Option<PathBuf>,
    pub rss_tolerance_pct: f64,
    pub fd_slack: usize,
    pub strict_host: bool,
    pub allow_errors: bool,
    pub keep: bool,
    pub build: bool,
    pub sample_secs: f64,
    pub cgroup_root: String,
}

const USAGE: &str = "cargo xtask soak [--lifecycles N (10000)] [--minutes M (10)] [--parallel P (4)] [--clients C (64)] \
[--json FILE] [--rss-tolerance PCT (5)] [--fd-slack N (8)] [--strict-host] [--allow-errors] [--keep] [--no-build] \
[--sample-secs S (2)] [--cgroup-root NAME (fcsup-soak)]";

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        lifecycles: 10_000,
        minutes: 10.0,
        parallel: 4,
        clients: 64,
        json: None,
        rss_tolerance_pct: 5.0,
        fd_slack: 8,
        strict_host: false,
        allow_errors: false,
        keep: false,
        build: true,
        sample_secs: 2.0,
        cgroup_root: "fcsup-soak".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value; usage: {USAGE}"));
        match a.as_str() {
            "--lifecycles" => o.lifecycles = val()?.parse()?,
            "--minutes" => o.minutes = val()?.parse()?,
            "--parallel" => o.parallel = val()?.parse()?,
            "--clients" => o.clients = val()?.parse()?,
            "--json" => o.json = Some(val()?.into()),
            "--rss-tolerance" => o.rss_tolerance_pct = val()?.parse()?,
            "--fd-slack" => o.fd_slack = val()?.parse()?,
            "--sample-secs" => o.sample_secs = val()?.parse()?,
            "--cgroup-root" => o.cgroup_root = val()?.clone(),
            "--strict-host" => o.strict_host = true,
            "--allow-errors" => o.allow_errors = true,
            "--keep" => o.keep = true,
            "--no-build" => o.build = false,
            _ => bail!("unknown option {a}; usage: {USAGE}"),
        }
    }
    let minutes_ok = (0.0..=24.0 * 60.0).contains(&o.minutes);
    let period_ok = o.sample_secs.is_finite() && o.sample_secs > 0.0;
    if o.parallel == 0 || o.clients == 0 || !minutes_ok || !period_ok {
        bail!("bad option values; usage: {USAGE}");
    }
    Ok(o)
}

/// The served file: `life-*` functions (Initializer and PreStop hooks, one instance each)
/// for phase A, `echo1`/`echo10` (instanceConcurrency 1 and 10) for phase B.
fn s_yaml(code: &Path, parallel: usize, clients: usize) -> String {
    let f = |name: &str, extra: &str| {
        format!(
            "  {name}:\n    props:\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 10\n      customRuntimeConfig: {{command: [/code/{FIXTURE_COMM}]}}\n{extra}",
            code.display()
        )
    };
    let mut y = format!("edition: 3.0.0\nfcsup: {{maxInstances: {}}}\nresources:\n", parallel * 2 + clients + 32);
    let hooks = "      instanceLifecycleConfig:\n        initializer: {handler: init, timeout: 3}\n        preStop: {handler: prestop, timeout: 3}\n      fcsup: {idleTimeout: 3600, maxInstances: 2}\n";
    for i in 0..parallel {
        y += &f(&format!("life-{i}"), hooks);
    }
    y += &f("echo1", &format!("      fcsup: {{idleTimeout: 3600, maxInstances: {clients}}}\n"));
    y += &f("echo10", &format!("      instanceConcurrency: 10\n      fcsup: {{idleTimeout: 3600, maxInstances: {}}}\n", clients.div_ceil(10) + 4));
    y
}

/// Writes `LEDGER_IN_MEMORY` records shaped like an invocation's of a function the soak
/// never serves.
fn prefill_ledger(path: &Path) -> Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for i in 0..LEDGER_IN_MEMORY {
        let rec = serde_json::json!({
            "instance": format!("c-prefill-{i:022x}"), "function": PREFILL_FUNCTION, "phase": "invoke",
            "resource_mode": "OnDemand", "cold_start": false,
            "request_ids": [format!("{i:08x}-0000-4000-8000-{i:012x}")], "invocations": 1,
            "start_ms": 1_700_000_000_000u64 + i as u64, "wall_us": 400, "cpu_us": 100, "cpu_user_us": 60,
            "cpu_system_us": 40, "peak_memory_bytes": 1_048_576, "billed_ms": 1, "memory_mb": 1024,
            "vcpu": 1.0, "disk_mb": 512,
            "cu": {"vcpu": 0.001, "memory": 0.00015, "disk": 0.0, "invocations": 0.0075, "total": 0.00865},
            "measured_cpu_cu": 0.0001, "cost_usd": 0.000000173
        });
        serde_json::to_writer(&mut w, &rec)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// What the ledger says after the run.
#[derive(Debug, Default)]
pub struct LedgerFacts {
    pub records: u64,
    pub unreadable: u64,
    /// Distinct phase-A instances, and those with initialize, invoke and pre-stop records.
    pub life_instances: usize,
    pub life_complete: usize,
    /// Invocations the echo functions' records bill.
    pub echo_invocations: u64,
}

fn read_ledger(path: &Path) -> Result<LedgerFacts> {
    let mut f = LedgerFacts::default();
    let mut life: HashMap<String, u8> = HashMap::new();
    let prefill = format!("\"function\":\"{PREFILL_FUNCTION}\"");
    for line in BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        if line.trim().is_empty() || line.contains(&prefill) {
            continue;
        }
        f.records += 1;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            f.unreadable += 1;
            continue;
        };
        let function = v["function"].as_str().unwrap_or("");
        if function.starts_with("life-") {
            let bit = match v["phase"].as_str() {
                Some("initialize") => 1,
                Some("invoke") | Some("pre-freeze") => 2,
                Some("pre-stop") => 4,
                _ => 0,
            };
            *life.entry(v["instance"].as_str().unwrap_or("").to_string()).or_default() |= bit;
        } else if ECHO_FUNCTIONS.contains(&function) {
            f.echo_invocations += v["invocations"].as_u64().unwrap_or(0);
        }
    }
    f.life_instances = life.len();
    f.life_complete = life.values().filter(|b| **b == 7).count();
    Ok(f)
}

/// One sample of fcsup.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    pub rss_kib: u64,
    pub fds: usize,
}

/// State shared with the sampler thread.
#[derive(Default)]
struct Watch {
    samples: Mutex<Vec<Sample>>,
    netns: Mutex<BTreeSet<u64>>,
    instance_pids: Mutex<BTreeSet<u32>>,
    phase: Mutex<&'static str>,
    stop: AtomicBool,
}

impl Watch {
    /// Takes one sample now (also remembers the namespaces fcsup holds).
    fn sample(&self, pid: u32, t0: Instant) -> Sample {
        let (fds, ns) = probe::fds(pid);
        // fcsup also holds the namespace it runs in (to return threads to it): not its own.
        let home = probe::own_netns();
        self.netns.lock().expect("netns").extend(ns.into_iter().filter(|n| Some(*n) != home));
        let s = Sample { t_s: t0.elapsed().as_secs_f64(), phase: *self.phase.lock().expect("phase"), rss_kib: probe::rss_kib(pid).unwrap_or(0), fds };
        self.samples.lock().expect("samples").push(s.clone());
        s
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts fcsup and waits until it accepts connections.
fn start_fcsup(dir: &Path, addr: &str, root: &str) -> Result<Child> {
    let log = std::fs::File::create(dir.join("fcsup.log"))?;
    let mut child = Command::new("target/release/fcsup")
        .args(["serve", "-f"])
        .arg(dir.join("s.yaml"))
        .args(["--listen", addr, "--cgroup-root", root, "--quiet-functions", "--ledger"])
        .arg(dir.join("ledger.jsonl"))
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start target/release/fcsup")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("fcsup exited with {st} before listening; see {}", dir.join("fcsup.log").display());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("fcsup did not listen within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// SIGTERM, then waits up to 60 s; the exit status, or None when it had to be killed.
fn stop_fcsup(child: &mut Child) -> Result<Option<std::process::ExitStatus>> {
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32")), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything a run produced, for the table and the JSON.
pub struct Run {
    pub opts: Opts,
    pub admin_via: String,
    pub dir: PathBuf,
    pub before: probe::Snapshot,
    pub after: probe::Snapshot,
    pub lifecycles: traffic::Lifecycles,
    pub echoes: traffic::Echoes,
    pub ledger: LedgerFacts,
    pub exit: Option<std::process::ExitStatus>,
    pub instance_pids_alive: Vec<u32>,
    pub instance_pids_seen: usize,
    pub netns_seen: usize,
    pub samples: Vec<Sample>,
    /// RSS (KiB) after warm-up and at the end of each phase.
    pub rss_a: (u64, u64),
    pub rss_b: (u64, u64),
    /// fds at the start, idle after phase A, idle after phase B (instances reclaimed).
    pub fds_idle: (usize, usize, usize),
}

/// `cargo xtask soak …`.
pub fn main(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the soak runs fcsup, which needs root");
    }
    if opts.build {
        crate::run(Command::new("cargo").args(["build", "--release", "--bin", "fcsup", "--bin", "fcsup-init"]))?;
        crate::run(Command::new("cargo").args(["rustc", "--release", "--bin", "fcsup-fixture", "--", "-C", "target-feature=+crt-static"]))?;
    }
    let dir = std::env::temp_dir().join(format!("fcsup-soak-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("code"))?;
    std::fs::copy("target/release/fcsup-fixture", dir.join("code").join(FIXTURE_COMM)).context("the fixture: build it (drop --no-build)")?;
    std::fs::write(dir.join("s.yaml"), s_yaml(&dir.join("code"), opts.parallel, opts.clients))?;
    prefill_ledger(&dir.join("ledger.jsonl"))?;

    let root = opts.cgroup_root.clone();
    let before = probe::snapshot(&root, FIXTURE_COMM, &BTreeSet::new());
    let addr = format!("127.0.0.1:{}", free_port()?);
    println!("soak: fcsup on {addr}, cgroup root {root}, files in {}", dir.display());
    let mut child = start_fcsup(&dir, &addr, &root)?;
    let pid = child.id();
    let admin = Admin { sock: PathBuf::from(format!("/run/fcsup/{root}/admin.sock")), tcp: addr.clone() };
    let invoke = http::Target::Tcp(addr.clone());
    let t0 = Instant::now();
    let watch = Arc::new(Watch::default());
    *watch.phase.lock().expect("phase") = "start";
    let sampler = {
        let (watch, admin, period) = (watch.clone(), admin.clone(), Duration::from_secs_f64(opts.sample_secs));
        std::thread::spawn(move || {
            while !watch.stop.load(Ordering::Acquire) {
                watch.sample(pid, t0);
                watch.instance_pids.lock().expect("pids").extend(admin.instance_pids());
                let until = Instant::now() + period;
                while Instant::now() < until && !watch.stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let fds_start = watch.sample(pid, t0).fds;

    // Phase A.
    *watch.phase.lock().expect("phase") = "A";
    let functions: Vec<String> = (0..opts.parallel).map(|i| format!("life-{i}")).collect();
    let progress = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(60 + opts.lifecycles / 10);
    let a_done = AtomicBool::new(false);
    let mut rss_a_warm = 0;
    let lifecycles = std::thread::scope(|s| {
        // Phase A is judged over its second half: the allocator's arenas fill over the first
        // few thousand lifecycles (measured: 16.3 MB at 1,000, a plateau near 18.4 MB from
        // about 6,000 on, the same at 10,000 and at 30,000).
        let marker = s.spawn(|| {
            while !a_done.load(Ordering::Acquire) {
                if progress.load(Ordering::Relaxed) >= opts.lifecycles / 2 {
                    return watch.sample(pid, t0).rss_kib;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            watch.sample(pid, t0).rss_kib
        });
        let r = traffic::lifecycles(&invoke, &admin, &functions, opts.lifecycles, deadline, &progress);
        a_done.store(true, Ordering::Release);
        rss_a_warm = marker.join().expect("marker");
        r
    });
    let rss_a_end = watch.sample(pid, t0).rss_kib;
    std::thread::sleep(Duration::from_millis(300));
    let fds_after_a = watch.sample(pid, t0).fds;

    // Phase B.
    *watch.phase.lock().expect("phase") = "B";
    let dur = Duration::from_secs_f64(opts.minutes * 60.0);
    let warm = dur.mul_f64(0.2).max(Duration::from_secs(10)).min(dur / 2);
    let b0 = Instant::now();
    let echo_fns: Vec<String> = ECHO_FUNCTIONS.iter().map(|s| s.to_string()).collect();
    let (echoes, rss_b_warm) = std::thread::scope(|s| {
        let marker = s.spawn(|| {
            sleep_until(b0 + warm);
            watch.sample(pid, t0).rss_kib
        });
        let e = traffic::echoes(&invoke, &echo_fns, opts.clients, b0 + dur, 50_000_000);
        (e, marker.join().expect("marker"))
    });
    let rss_b_end = watch.sample(pid, t0).rss_kib;

    // Idle again: the echo instances reclaimed.
    *watch.phase.lock().expect("phase") = "end";
    watch.instance_pids.lock().expect("pids").extend(admin.instance_pids());
    // Asked late: the socket may appear after fcsup listens on TCP.
    let admin_via = admin.via();
    for f in ECHO_FUNCTIONS {
        let _ = admin.call("POST", &format!("/admin/functions/{f}/reclaim"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_end = watch.sample(pid, t0).fds;
    watch.stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let exit = stop_fcsup(&mut child)?;
    std::thread::sleep(Duration::from_millis(200));

    let watched = watch.netns.lock().expect("netns").clone();
    let after = probe::snapshot(&root, FIXTURE_COMM, &watched);
    let seen = watch.instance_pids.lock().expect("pids").clone();
    let alive: Vec<u32> = seen.iter().copied().filter(|p| after.fixture_pids.contains(p) || after.pids_in_root.contains(p)).collect();
    let ledger = read_ledger(&dir.join("ledger.jsonl"))?;
    let samples = watch.samples.lock().expect("samples").clone();
    let run = Run {
        opts,
        admin_via,
        dir: dir.clone(),
        before,
        after,
        lifecycles,
        echoes,
        ledger,
        exit,
        instance_pids_alive: alive,
        instance_pids_seen: seen.len(),
        netns_seen: watched.len(),
        samples,
        rss_a: (rss_a_warm, rss_a_end),
        rss_b: (rss_b_warm, rss_b_end),
        fds_idle: (fds_start, fds_after_a, fds_end),
    };
    let verdict = report::print(&run);
    if let Some(j) = &run.opts.json {
        std::fs::write(j, serde_json::to_string_pretty(&report::json(&run, &verdict))?)?;
    }
    if verdict.is_empty() {
        if !run.opts.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    } else {
        bail!("soak failed: {}; files kept in {}", verdict.join("; "), dir.display())
    }
}
