//! The rows measured on fcsup itself: a supervisor started in this process, driven through
//! its own front door by the same blocking client that drives the peers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Conn;
use super::{Plan, Raw, Result};
use crate::config::Config;
use crate::supervisor::{Options, Supervisor};

/// The functions the bench serves; `image` (a reference) adds `image`, the native fixture as a
/// custom container.
fn config_yaml(native_dir: &Path, python_dir: &Path, handler_dir: &Path, image: Option<&str>) -> String {
    let native = |name: &str, extra: &str| {
        format!(
            "  {name}:\n    props:\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 60\n      customRuntimeConfig: {{command: [/code/fcsup-fixture]}}\n      fcsup: {{idleTimeout: 3600, maxInstances: 120}}\n{extra}",
            native_dir.display()
        )
    };
    let container = image.map_or_else(String::new, |r| {
        format!(
            "  image:\n    props:\n      runtime: custom-container\n      memorySize: 1024\n      cpu: 1\n      timeout: 60\n      customContainerConfig: {{image: '{r}', port: 9000}}\n      fcsup: {{idleTimeout: 3600, maxInstances: 120}}\n"
        )
    });
    format!(
        "fcsup: {{maxInstances: 250}}\nresources:\n{container}{}{}{}{}{}{}{}  python:\n    props:\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 60\n      customRuntimeConfig: {{command: [/usr/bin/python3, server.py]}}\n      fcsup: {{idleTimeout: 3600}}\n  handler:\n    props:\n      runtime: python3\n      handler: index.handler\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 60\n      fcsup: {{idleTimeout: 3600}}\n",
        native("native", ""),
        native("native16", "      instanceConcurrency: 16\n"),
        native("busy1", "      environmentVariables: {FIXTURE_BUSY_THREADS: '1'}\n"),
        native("busy50", "      environmentVariables: {FIXTURE_BUSY_THREADS: '50'}\n"),
        // The same with freeze hazards off: the report's cost is the difference.
        native("busy50off", "      environmentVariables: {FIXTURE_BUSY_THREADS: '50'}\n").replace("maxInstances: 120}", "maxInstances: 120, freezeHazards: off}"),
        native("child", "      environmentVariables: {FIXTURE_CHILD: '1'}\n"),
        native("scale", ""),
        python_dir.display(),
        handler_dir.display()
    )
}

/// A supervisor and its front door, for the bench's lifetime.
pub struct Rig {
    /// The system name its rows carry: `fcsup`, or [`INSECURE`].
    system: &'static str,
    sup: Arc<Supervisor>,
    addr: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

/// The rows of a supervisor run with `--insecure-instances` (no user namespace, no seccomp):
/// the baseline of the isolation's cost.
pub const INSECURE: &str = "insecure";

fn invoke_path(function: &str) -> String {
    format!("/2023-03-30/functions/{function}/invocations")
}

impl Rig {
    /// Starts a supervisor serving the fixtures under its own cgroup root; `insecure` runs
    /// its instances without a user namespace and seccomp filter; `image` (a reference and an
    /// image cache directory) also serves the native fixture from that image.
    pub async fn start(native_dir: &Path, python_dir: &Path, handler_dir: &Path, insecure: bool, image: Option<(&str, &Path)>) -> Result<Rig> {
        let yaml = config_yaml(native_dir, python_dir, handler_dir, image.map(|(r, _)| r));
        let config = Config::parse(&yaml, Path::new("bench.yaml"), Path::new("/"))?;
        let opts = Options {
            cgroup_root: format!("fcsup-bench-{}", std::process::id()),
            echo_logs: false,
            insecure_instances: insecure,
            ..Options::default()
        };
        let opts = match image {
            Some((_, cache)) => Options { image_cache: cache.to_path_buf(), ..opts },
            None => opts,
        };
        let sup = Supervisor::start(&config, &opts).await?;
        sup.reporting().samples().enable();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::api::serve(listener, sup.clone(), crate::api::FrontDoor::new(crate::api::Limits::default(), None), rx));
        Ok(Rig { system: if insecure { INSECURE } else { "fcsup" }, sup, addr, stop, server })
    }

    /// Stops every instance and removes the cgroup root.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.sup.shutdown().await;
    }

    async fn reclaim(&self, function: &str) {
        if let Some(p) = self.sup.pool(function) {
            p.reclaim_all().await;
        }
    }

    /// Sends one request to `function` on a kept-alive connection (blocking, off the runtime).
    async fn post(&self, conn: Conn, function: &str, body: &'static [u8]) -> Result<(Conn, Duration, String)> {
        let path = invoke_path(function);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let t = Instant::now();
            let a = conn.post(&path, body)?;
            ensure!(a.status == 200, "{path} answered HTTP {}", a.status);
            Ok((conn, t.elapsed(), a.instance))
        })
        .await?
    }

    async fn conn(&self) -> Result<Conn> {
        Ok(Conn::open(&self.addr)?)
    }

    /// Cold starts of `function` to the first response, phase by phase, and its teardown.
    pub async fn cold_starts(&self, function: &str, workload: &str, n: usize, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
        self.reclaim(function).await;
        let mut conn = self.conn().await?;
        for _ in 0..n {
            let (c, took, id) = self.post(conn, function, b"").await?;
            conn = c;
            let inst = self.sup.instance(&id).ok_or_else(|| failed!("instance {id} vanished"))?;
            let t = inst.start_trace();
            let us = took.as_secs_f64() * 1e6;
            let phases = [
                ("cgroup", t.cgroup_us as f64),
                ("setup", t.clone_us.saturating_sub(t.cgroup_us) as f64),
                ("exec", t.exec_us.saturating_sub(t.clone_us) as f64),
                ("listen", t.listening_us.saturating_sub(t.exec_us) as f64),
                ("initialize", t.initialized_us.saturating_sub(t.listening_us) as f64),
                ("respond", (us - t.initialized_us as f64).max(0.0)),
            ];
            raw.push(self.system, "cold_start", workload, us);
            for (phase, v) in phases {
                raw.push(self.system, &format!("cold_start.{phase}"), workload, v);
            }
            self.reclaim(function).await;
            if let Some(s) = inst.stop_trace() {
                raw.push(self.system, "teardown", workload, s.removed_us as f64);
                raw.push(self.system, "teardown.pre_stop", workload, s.pre_stop_us as f64);
                raw.push(self.system, "teardown.sigterm_to_reaped", workload, s.reaped_us.saturating_sub(s.sigterm_us) as f64);
                raw.push(self.system, "teardown.cgroup_removed", workload, s.removed_us.saturating_sub(s.reaped_us) as f64);
            }
            tick();
        }
        Ok(())
    }

    /// Freeze and thaw as fcsup confirms them, and thaw as a request sees it, with requests
    /// `gap` apart (longer than cgroup.events' 12 ms notification interval).
    pub async fn freeze_thaw(&self, function: &str, workload: &str, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
        let mut conn = self.conn().await?;
        let (c, _, _) = self.post(conn, function, b"").await?;
        conn = c;
        tokio::time::sleep(Duration::from_millis(50)).await;
        for k in ["freeze", "thaw", "thaw_seen"] {
            self.sup.reporting().samples().take(k);
        }
        for _ in 0..plan.freeze_n {
            tokio::time::sleep(plan.gap).await;
            let (c, _, _) = self.post(conn, function, b"").await?;
            conn = c;
            tick();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (k, metric) in [("freeze", "freeze"), ("thaw", "thaw"), ("thaw_seen", "thaw_seen")] {
            for d in self.sup.reporting().samples().take(k) {
                raw.push("fcsup", metric, workload, d.as_secs_f64() * 1e6);
            }
        }
        self.reclaim(function).await;
        Ok(())
    }

    /// Warm requests `gap` apart to `function`, each thawing and freezing the instance.
    pub async fn warm(&self, function: &str, workload: &str, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
        let mut conn = self.conn().await?;
        let (c, _, _) = self.post(conn, function, b"").await?;
        conn = c;
        self.sup.reporting().samples().take("thaw");
        for _ in 0..plan.warm_n {
            tokio::time::sleep(plan.warm_gap).await;
            let (c, took, _) = self.post(conn, function, b"").await?;
            conn = c;
            raw.push("fcsup", "warm_invoke", workload, took.as_secs_f64() * 1e6);
            tick();
        }
        let thaws = self.sup.reporting().samples().take("thaw").len();
        raw.note(format!("fcsup warm_invoke ({workload}): {thaws} of {} requests found the instance frozen and thawed it", plan.warm_n));
        self.reclaim(function).await;
        Ok(())
    }

    /// Closed-loop requests per second with `clients` connections for `secs`.
    pub async fn throughput(&self, function: &str, clients: usize, plan: &Plan) -> Result<f64> {
        let addr = self.addr.clone();
        let path = invoke_path(function);
        let mut warm = self.conn().await?;
        let path2 = path.clone();
        tokio::task::spawn_blocking(move || warm.post(&path2, b"")).await??;
        let dur = plan.rps_duration;
        let r = tokio::task::spawn_blocking(move || closed_loop(&addr, &path, clients, dur)).await?;
        self.reclaim(function).await;
        r
    }

    /// Starts `count` instances at once (requests that each hold one for a second); returns
    /// (seconds until all were ready, supervisor RSS per live instance in KiB).
    pub async fn scale(&self, count: usize) -> Result<(f64, f64)> {
        for p in self.sup.pools() {
            p.reclaim_all().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss0 = rss_kib();
        let addr = self.addr.clone();
        let t0 = Instant::now();
        let clients: Vec<_> = (0..count)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || -> std::io::Result<u16> {
                    Conn::open(&addr)?.post(&invoke_path("scale"), b"sleep:1500").map(|a| a.status)
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = loop {
            let insts = self.sup.pool("scale").map(|p| p.instances()).unwrap_or_default();
            let done: Vec<Instant> = insts
                .iter()
                .filter(|i| i.start_trace().ready_us > 0)
                .map(|i| i.created() + Duration::from_micros(i.start_trace().ready_us))
                .collect();
            if done.len() >= count {
                break done.into_iter().max().map(|t| t.duration_since(t0)).unwrap_or_default();
            }
            ensure!(Instant::now() < deadline, "only {} of {count} instances started within 60 s", done.len());
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let rss = rss_kib();
        for c in clients {
            let status = c.join().map_err(|_| failed!("client thread panicked"))??;
            ensure!(status == 200, "a scale request answered HTTP {status}");
        }
        self.reclaim("scale").await;
        Ok((ready.as_secs_f64(), (rss - rss0) / count as f64))
    }

    /// Whether a child process of a frozen instance keeps using CPU (it must not).
    pub async fn child_runs_while_frozen(&self) -> Result<bool> {
        let conn = self.conn().await?;
        let (_, _, id) = self.post(conn, "child", b"").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let inst = self.sup.instance(&id).ok_or_else(|| failed!("instance {id} vanished"))?;
        let usage = || inst.cgroup().cpu_stat().map(|s| s.usage_usec).unwrap_or(0);
        let before = usage();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ran = usage() > before;
        self.reclaim("child").await;
        Ok(ran)
    }
}

/// `clients` threads each sending requests back to back for `dur`; requests per second.
pub fn closed_loop(addr: &str, path: &str, clients: usize, dur: Duration) -> Result<f64> {
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, path) = (addr.to_string(), path.to_string());
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut c = Conn::open(&addr)?;
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                let mut n = 0;
                while start.elapsed() < dur {
                    c.post(&path, b"")?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| failed!("client thread panicked"))??;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

/// This process's resident set, KiB.
pub fn rss_kib() -> f64 {
    procfs::process::Process::myself().and_then(|p| p.status()).ok().and_then(|s| s.vmrss).map_or(0.0, |kib| kib as f64)
}
