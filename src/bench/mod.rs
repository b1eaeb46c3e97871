//! `fcsup bench`: cold starts phase by phase, freeze and thaw, warm-invoke overhead and scale,
//! measured on fcsup and, in the same run, on the tools users would pick instead (a plain
//! process, SIGSTOP, `crun`, `runc`), printed as ratios to fcsup's figures. Every figure comes
//! from this run; nothing is compared with numbers taken elsewhere.

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A measurement could not be taken; the message says which and why.
    #[error("{0}")]
    Failed(String),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The supervisor under test failed.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// The bench's own function configuration was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The cgroup hierarchy could not be read.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A worker's output did not parse.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A measuring task failed.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Results of the bench.
pub type Result<T> = std::result::Result<T, BenchError>;

macro_rules! failed {
    ($($fmt:tt)+) => { $crate::bench::BenchError::Failed(format!($($fmt)+)) };
}
macro_rules! bail {
    ($($fmt:tt)+) => { return Err(failed!($($fmt)+)) };
}
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => { if !$cond { bail!($($fmt)+); } };
}

mod chart;
mod client;
mod fcsup;
mod image;
mod peers;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use stats::Row;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Fewer samples: every row in under a minute.
    pub quick: bool,
    /// Write every row's summary and the host facts here.
    pub json: Option<PathBuf>,
    /// Write the charts here.
    pub svg: Option<PathBuf>,
    /// The native fixture (`fcsup-fixture`, built static by `cargo xtask bench`).
    pub fixture: PathBuf,
    /// Skip crun, runc and SIGSTOP.
    pub no_peers: bool,
    /// Only these groups (`cold`, `freeze`, `warm`, `scale`); empty: all.
    pub only: Vec<String>,
}

impl BenchOptions {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// Sample counts and pacing.
#[derive(Debug, Clone)]
pub struct Plan {
    cold_n: usize,
    python_n: usize,
    peer_cold_n: usize,
    freeze_n: usize,
    /// Between freeze/thaw samples: above cgroup.events' 12 ms notification interval.
    gap: Duration,
    warm_n: usize,
    warm_gap: Duration,
    rps_duration: Duration,
    scale: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                cold_n: 10,
                python_n: 4,
                peer_cold_n: 5,
                freeze_n: 30,
                gap: Duration::from_millis(25),
                warm_n: 100,
                warm_gap: Duration::from_millis(2),
                rps_duration: Duration::from_millis(500),
                scale: 100,
            }
        } else {
            Plan {
                cold_n: 100,
                python_n: 20,
                peer_cold_n: 30,
                freeze_n: 200,
                gap: Duration::from_millis(30),
                warm_n: 1000,
                warm_gap: Duration::from_millis(2),
                rps_duration: Duration::from_secs(2),
                scale: 100,
            }
        }
    }
}

/// Raw samples by (system, metric, workload), and notes.
#[derive(Debug, Default)]
pub struct Raw {
    samples: BTreeMap<(String, String, String), Vec<f64>>,
    scalars: Vec<Row>,
    notes: Vec<String>,
}

impl Raw {
    fn push(&mut self, system: &str, metric: &str, workload: &str, v: f64) {
        self.samples.entry((system.into(), metric.into(), workload.into())).or_default().push(v);
    }

    fn scalar(&mut self, system: &str, metric: &str, workload: &str, unit: &str, v: f64) {
        self.scalars.push(Row::new(system, metric, workload, unit, &[v]));
    }

    fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    fn get(&self, system: &str, metric: &str, workload: &str) -> Option<&Vec<f64>> {
        self.samples.get(&(system.into(), metric.into(), workload.into()))
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.samples.iter().map(|((s, m, w), v)| Row::new(s, m, w, "us", v)).collect();
        // Added latency over the direct request / the plain process, quantile by quantile.
        // And the isolation's cost: fcsup's cold start over the same without a user namespace
        // and seccomp filter.
        let isolation = ("cold_start", "cold_start_isolation_cost", "native", fcsup::INSECURE, Some("fcsup"));
        for (metric, added, workload, base_system, only) in [
            ("warm_invoke", "warm_invoke_added", "native", "plain", None),
            ("cold_start", "cold_start_added", "native", "plain", None),
            ("cold_start", "cold_start_added", HANDLER, "plain", None),
            isolation,
        ] {
            if let Some(base) = rows.iter().find(|r| r.system == base_system && r.metric == metric && r.workload == workload).cloned() {
                let more: Vec<Row> = rows
                    .iter()
                    .filter(|r| r.system != base_system && only.is_none_or(|s| r.system == s) && r.metric == metric && r.workload == workload)
                    .map(|r| r.minus(&base, added))
                    .collect();
                rows.extend(more);
            }
        }
        // What a custom container adds over the custom runtime of the same fixture, phase by phase.
        let image_added: Vec<Row> = rows
            .iter()
            .filter(|r| r.system == "fcsup" && r.workload == "image" && (r.metric == "cold_start" || r.metric.starts_with("cold_start.")))
            .filter_map(|r| {
                let base = rows.iter().find(|b| b.system == "fcsup" && b.workload == "native" && b.metric == r.metric)?;
                Some(r.minus(base, &r.metric.replacen("cold_start", "cold_start_image_added", 1)))
            })
            .collect();
        rows.extend(image_added);
        // What the runtime API adds to a warm invoke over a custom runtime's proxied HTTP
        // request (the native fixture), the Python handler's own few µs included.
        let runtime_api_added = rows.iter().find(|r| r.system == "fcsup" && r.metric == "warm_invoke" && r.workload == HANDLER).and_then(|h| {
            let base = rows.iter().find(|b| b.system == "fcsup" && b.metric == "warm_invoke" && b.workload == "native")?;
            Some(h.minus(base, "warm_invoke_runtime_api_added"))
        });
        rows.extend(runtime_api_added);
        rows.extend(self.scalars.iter().cloned());
        rows
    }
}

/// Facts about the machine the figures come from.
#[derive(Debug, Serialize)]
pub struct HostFacts {
    kernel: String,
    cgroup_mode: String,
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    fcsup_version: &'static str,
    date: String,
    quick: bool,
    supervisor_priority: String,
}

fn host_facts(quick: bool) -> HostFacts {
    use procfs::Current;
    let mode =
        crate::cgroup::Hierarchy::discover(Path::new("/proc/self/mountinfo")).map(|h| format!("{:?}", h.mode)).unwrap_or_else(|e| e.to_string());
    let mem_bytes = procfs::Meminfo::current().map(|m| m.mem_total as f64).unwrap_or(0.0);
    let cpu_model = procfs::CpuInfo::current().ok().and_then(|c| c.model_name(0).map(str::to_string)).unwrap_or_default();
    let policy = crate::sandbox::sys::sched_getscheduler().unwrap_or(libc::SCHED_OTHER) & !libc::SCHED_RESET_ON_FORK;
    HostFacts {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cgroup_mode: mode,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        memory_gib: (mem_bytes / 1024.0 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        fcsup_version: env!("CARGO_PKG_VERSION"),
        date: crate::clock::now_rfc3339(),
        quick,
        supervisor_priority: if policy == libc::SCHED_FIFO { "SCHED_FIFO".into() } else { "SCHED_OTHER".into() },
    }
}

/// The whole result.
#[derive(Debug, Serialize)]
pub struct Report {
    host: HostFacts,
    results: Vec<Row>,
    correctness: Vec<Correctness>,
    notes: Vec<String>,
}

/// The workload of the Python handler function (FC's built-in runtime, `index.handler`).
const HANDLER: &str = "python handler";

/// Does a child process of the function keep running while "frozen"?
#[derive(Debug, Serialize)]
pub struct Correctness {
    system: String,
    child_keeps_running_while_frozen: Option<bool>,
    how: String,
}

fn progress(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}").expect("template"));
    pb
}

/// Runs the suite and prints the table; writes JSON and SVG when asked.
pub async fn run(opts: BenchOptions) -> Result<Report> {
    ensure!(
        opts.fixture.is_file(),
        "the native fixture {} is missing: run `cargo xtask bench` (builds it static), or `cargo build --release` (it builds target/release/fcsup-fixture) or pass --fixture",
        opts.fixture.display()
    );
    let plan = Plan::new(opts.quick);
    let work = std::env::temp_dir().join(format!("fcsup-bench-{}", std::process::id()));
    let native_dir = work.join("native");
    std::fs::create_dir_all(&native_dir)?;
    std::fs::copy(&opts.fixture, native_dir.join("fcsup-fixture"))?;
    let examples = crate::demo::write_examples()?;
    let python_dir = examples.join("hello");
    // The smallest handler: what the runtime costs, not what the function does.
    let handler_dir = work.join("handler");
    std::fs::create_dir_all(&handler_dir)?;
    std::fs::write(handler_dir.join("index.py"), "def handler(event, context):\n    return event\n")?;
    let result = async {
        let image_dir = work.join("image");
        let image = if opts.wants("cold") {
            std::fs::create_dir_all(&image_dir)?;
            image::build(&image_dir, &opts.fixture)?
        } else {
            None
        };
        run_in(&opts, &plan, &native_dir, &python_dir, &handler_dir, image.as_ref(), &image_dir).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&examples);
    let report = result?;
    print!("{}", table(&report));
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", p.display());
    }
    Ok(report)
}

async fn run_in(
    opts: &BenchOptions,
    plan: &Plan,
    native_dir: &Path,
    python_dir: &Path,
    handler_dir: &Path,
    image: Option<&image::FixtureImage>,
    image_dir: &Path,
) -> Result<Report> {
    let peers_on = !opts.no_peers;
    let total = (plan.cold_n * 4 + plan.python_n * 4 + plan.freeze_n * 3 + plan.warm_n * 3) as u64
        + if peers_on { (plan.freeze_n * 2 + (plan.peer_cold_n + plan.freeze_n * 3) * 2) as u64 } else { 0 };
    let pb = progress(total);
    let tick = || pb.inc(1);
    let mut raw = Raw::default();
    let mut correctness = Vec::new();
    let fixture = native_dir.join("fcsup-fixture");
    let native_cmd = vec![fixture.display().to_string()];
    let python_cmd = vec!["/usr/bin/python3".to_string(), "server.py".to_string()];

    pb.set_message("fcsup: starting the supervisor");
    let reference = image.map(image::FixtureImage::reference);
    let cache = image_dir.join("cache");
    let rig = fcsup::Rig::start(native_dir, python_dir, handler_dir, false, reference.as_deref().map(|r| (r, cache.as_path()))).await?;
    let measured = async {
        if opts.wants("cold") {
            pb.set_message(if image.is_some() { "cold start: fcsup, native and from its image" } else { "cold start: fcsup, native" });
            for _ in 0..plan.cold_n {
                // Interleaved, so both see the same state of the host.
                rig.cold_starts("native", "native", 1, &mut raw, &tick).await?;
                if image.is_some() {
                    rig.cold_starts("image", "image", 1, &mut raw, &tick).await?;
                }
            }
            pb.set_message("cold start: fcsup, python");
            rig.cold_starts("python", "python", plan.python_n, &mut raw, &tick).await?;
            pb.set_message("cold start: fcsup, python handler (built-in runtime)");
            rig.cold_starts("handler", HANDLER, plan.python_n, &mut raw, &tick).await?;
        }
        if opts.wants("freeze") {
            pb.set_message("freeze/thaw: fcsup, 1 busy thread");
            rig.freeze_thaw("busy1", "1 busy thread", plan, &mut raw, &tick).await?;
            pb.set_message("freeze/thaw: fcsup, 50 busy threads");
            rig.freeze_thaw("busy50", "50 busy threads", plan, &mut raw, &tick).await?;
            pb.set_message("freeze/thaw: fcsup, 50 busy threads, freeze hazards off");
            rig.freeze_thaw("busy50off", "50 busy threads, hazards off", plan, &mut raw, &tick).await?;
            let ran = rig.child_runs_while_frozen().await?;
            correctness.push(Correctness {
                system: "fcsup".into(),
                child_keeps_running_while_frozen: Some(ran),
                how: "cgroup usage_usec over 300 ms frozen".into(),
            });
        }
        if opts.wants("warm") {
            pb.set_message("warm invoke: fcsup");
            rig.warm("native", "native", plan, &mut raw, &tick).await?;
            pb.set_message("warm invoke: fcsup, python handler over the runtime API");
            rig.warm("handler", HANDLER, plan, &mut raw, &tick).await?;
            pb.set_message("throughput: fcsup");
            let c1 = rig.throughput("native", 1, plan).await?;
            let c16 = rig.throughput("native16", 16, plan).await?;
            raw.scalar("fcsup", "requests_per_second", "concurrency 1", "req/s", c1);
            raw.scalar("fcsup", "requests_per_second", "concurrency 16", "req/s", c16);
        }
        if opts.wants("scale") {
            pb.set_message(format!("scale: {} instances at once", plan.scale));
            let (secs, rss) = rig.scale(plan.scale).await?;
            raw.scalar("fcsup", "start_instances_concurrently", &format!("{} instances", plan.scale), "us", secs * 1e6);
            raw.scalar("fcsup", "instance_starts_per_second", &format!("{} instances", plan.scale), "instances/s", plan.scale as f64 / secs);
            raw.scalar("fcsup", "supervisor_rss_per_instance", &format!("{} instances", plan.scale), "KiB", rss);
        }
        Ok::<(), BenchError>(())
    }
    .await;
    rig.shutdown().await;
    measured?;
    if opts.wants("cold") {
        pb.set_message("cold start: fcsup --insecure-instances, native");
        let rig = fcsup::Rig::start(native_dir, python_dir, handler_dir, true, None).await?;
        let measured = rig.cold_starts("native", "native", plan.cold_n, &mut raw, &tick).await;
        rig.shutdown().await;
        measured?;
    }

    pb.set_message("plain process");
    if opts.wants("cold") {
        plain_rows(&native_cmd, &python_cmd, python_dir, plan, &mut raw, &tick)?;
        peers::plain_import(handler_dir, HANDLER, plan.python_n, &mut raw, &tick)?;
        match image {
            None => raw.note("custom container rows: umoci is not installed, skipped (apt-get install umoci)".into()),
            Some(image) => {
                pb.set_message("first pull from docker-registry");
                let n = if opts.quick { 3 } else { 10 };
                match image::first_pulls(image, &image_dir.join("pulls"), n, &mut raw).await {
                    Ok(true) => {}
                    Ok(false) => {
                        raw.note("first_pull: docker-registry or skopeo is not installed, skipped (apt-get install docker-registry skopeo)".into())
                    }
                    Err(e) => raw.note(format!("first_pull: failed, skipped: {e}")),
                }
            }
        }
    }
    if opts.wants("warm") {
        let (c1, c16) = peers::plain_warm(&fixture, plan, &mut raw, &tick)?;
        raw.scalar("plain", "requests_per_second", "concurrency 1", "req/s", c1);
        raw.scalar("plain", "requests_per_second", "concurrency 16", "req/s", c16);
    }

    if peers_on && opts.wants("freeze") {
        pb.set_message("SIGSTOP");
        peers::sigstop(&fixture, 1, "1 busy thread", plan, &mut raw, &tick)?;
        peers::sigstop(&fixture, 50, "50 busy threads", plan, &mut raw, &tick)?;
        let ran = peers::sigstop_child_runs(&fixture)?;
        correctness.push(Correctness {
            system: "sigstop".into(),
            child_keeps_running_while_frozen: Some(ran),
            how: "child's utime+stime over 300 ms stopped".into(),
        });
    }
    if peers_on && (opts.wants("cold") || opts.wants("freeze") || opts.wants("warm")) {
        for name in ["crun", "runc"] {
            pb.set_message(name);
            let bundle = if name == "crun" && opts.wants("cold") { image.map(|i| i.bundle.as_path()) } else { None };
            match container_rows(name, &fixture, bundle, opts.quick) {
                Ok(Some(r)) => {
                    for row in r.rows {
                        raw.samples.entry((row.0, row.1, row.2)).or_default().extend(row.3);
                    }
                    correctness.push(Correctness {
                        system: name.into(),
                        child_keeps_running_while_frozen: None,
                        how: "not measured: pause uses the freezer cgroup, which stops every process: fcsup's own measurement".into(),
                    });
                }
                Ok(None) => raw.note(format!("{name}: not installed, skipped (apt-get install {name})")),
                Err(e) => raw.note(format!("{name}: failed, skipped: {e:#}")),
            }
            pb.inc((plan.peer_cold_n + plan.freeze_n * 3) as u64);
        }
    }
    pb.finish_and_clear();
    let report = Report { host: host_facts(opts.quick), results: raw.rows(), correctness, notes: raw.notes.clone() };
    if let Some(svg) = &opts.svg {
        match chart::write(svg, &report.results, &raw) {
            Ok(()) => println!("wrote {}", svg.display()),
            Err(e) => eprintln!("cannot write {}: {e}", svg.display()),
        }
    }
    Ok(report)
}

fn plain_rows(native: &[String], python: &[String], python_dir: &Path, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
    peers::plain_cold(native, Path::new("/"), "native", plan.cold_n, raw, tick)?;
    peers::plain_cold(python, python_dir, "python", plan.python_n, raw, tick)
}

/// Samples a container runtime produced (possibly in a worker process).
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct WorkerOutput {
    rows: Vec<(String, String, String, Vec<f64>)>,
}

/// crun's and runc's rows. crun refuses hybrid hosts whose cgroup2 lists controllers, so there
/// it runs in a worker process inside a private mount namespace with cgroup2 unmounted: no
/// per-call wrapper cost is added to its figures.
fn container_rows(name: &str, fixture: &Path, image_bundle: Option<&Path>, quick: bool) -> Result<Option<WorkerOutput>> {
    if peers::Runtime::find(name, fixture).is_none() {
        return Ok(None);
    }
    let hier = crate::cgroup::Hierarchy::discover(Path::new("/proc/self/mountinfo"))?;
    if name == "crun" && hier.mode == crate::cgroup::Mode::Hybrid {
        let exe = std::env::current_exe()?;
        let script = format!("umount {} && exec \"$0\" \"$@\"", hier.v2.display());
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script]).arg(&exe).args(["bench-worker", name, "--fixture"]).arg(fixture);
        if quick {
            cmd.arg("--quick");
        }
        if let Some(b) = image_bundle {
            cmd.env(IMAGE_BUNDLE_ENV, b);
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        ensure!(out.status.success(), "the {name} worker failed ({})", out.status);
        return Ok(Some(serde_json::from_slice(&out.stdout)?));
    }
    worker_with(name, fixture, image_bundle, quick).map(Some)
}

/// Where a `bench-worker` finds the fixture image's bundle (`umoci unpack`), for its cold
/// starts from that image.
const IMAGE_BUNDLE_ENV: &str = "FCSUP_BENCH_IMAGE_BUNDLE";

/// Runs one container runtime's rows in this process (the `bench-worker` command).
pub fn worker(name: &str, fixture: &Path, quick: bool) -> Result<WorkerOutput> {
    let bundle = std::env::var_os(IMAGE_BUNDLE_ENV).map(PathBuf::from);
    worker_with(name, fixture, bundle.as_deref(), quick)
}

fn worker_with(name: &str, fixture: &Path, image_bundle: Option<&Path>, quick: bool) -> Result<WorkerOutput> {
    let plan = Plan::new(quick);
    let mut rt = peers::Runtime::find(name, fixture).ok_or_else(|| failed!("{name} is not installed"))?;
    let mut raw = Raw::default();
    let tick = || {};
    rt.cold(plan.peer_cold_n, None, &mut raw, &tick)?;
    if let Some(b) = image_bundle {
        rt.cold(plan.peer_cold_n, Some(b), &mut raw, &tick)?;
    }
    rt.pause_resume(1, "1 busy thread", &plan, &mut raw, &tick)?;
    rt.pause_resume(50, "50 busy threads", &plan, &mut raw, &tick)?;
    rt.pause_resume(0, "idle", &plan, &mut raw, &tick)?;
    Ok(WorkerOutput { rows: raw.samples.into_iter().map(|((s, m, w), v)| (s, m, w, v)).collect() })
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "us" if v.abs() >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
        "us" if v.abs() >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        "us" => format!("{v:.0} µs"),
        u => format!("{v:.1} {u}"),
    }
}

/// The terminal table: one line per system and row, with the ratio of its p50 to fcsup's.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "host: {} · kernel {} · cgroups {} · {} CPUs · {} GiB · supervisor {}{}\n\n",
        r.host.cpu_model,
        r.host.kernel,
        r.host.cgroup_mode,
        r.host.cpus,
        r.host.memory_gib,
        r.host.supervisor_priority,
        if r.host.quick { " · --quick" } else { "" }
    );
    out.push_str(&format!(
        "{:<34} {:<16} {:<8} {:>6} {:>10} {:>10} {:>10} {:>10}  {}\n",
        "METRIC", "WORKLOAD", "SYSTEM", "N", "P50", "P90", "P99", "MAX", "P50 / FCSUP"
    ));
    let mut keys: Vec<(String, String)> = r.results.iter().map(|x| (x.metric.clone(), x.workload.clone())).collect();
    keys.sort();
    keys.dedup();
    let order = ["fcsup", fcsup::INSECURE, "plain", "sigstop", "crun", "runc"];
    for (metric, workload) in keys {
        let mut rows: Vec<&Row> = r.results.iter().filter(|x| x.metric == metric && x.workload == workload).collect();
        rows.sort_by_key(|x| order.iter().position(|o| *o == x.system).unwrap_or(9));
        let base = rows.iter().find(|x| x.system == "fcsup").map(|x| x.p50);
        for x in rows {
            let ratio = match base {
                Some(b) if x.system != "fcsup" && b.abs() > f64::EPSILON => format!("{:.2}×", x.p50 / b),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<34} {:<16} {:<8} {:>6} {:>10} {:>10} {:>10} {:>10}  {}\n",
                metric,
                workload,
                x.system,
                x.n,
                fmt_value(x.p50, &x.unit),
                fmt_value(x.p90, &x.unit),
                fmt_value(x.p99, &x.unit),
                fmt_value(x.max, &x.unit),
                ratio
            ));
        }
    }
    out.push_str("\nDoes a child process keep running while frozen?\n");
    for c in &r.correctness {
        let v = match c.child_keeps_running_while_frozen {
            Some(true) => "YES (not really frozen)",
            Some(false) => "no",
            None => "-",
        };
        out.push_str(&format!("  {:<8} {:<24} {}\n", c.system, v, c.how));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
