//! The peers, driven the way their users drive them: a plain fork+exec of the fixture (the
//! floor), SIGSTOP/SIGCONT of its main pid (lambda-simulator), `crun`/`runc run` per call
//! (`s local`) and `pause`/`resume` around each request (OpenWhisk).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;

use super::client::Conn;
use super::{Plan, Raw, Result};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The fixture started as a plain process on `port`.
/// A plain fixture process in a process group of its own: dropping it kills the group (the
/// fixture and any child it started), however the measurement ended.
struct Plain(Child);

impl Plain {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        // The process group we created: its id is the child's pid.
        let _ = nix::sys::signal::killpg(pid(self.0.id()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn spawn_plain(cmd: &[String], cwd: &Path, port: u16, env: &[(&str, &str)]) -> std::io::Result<Plain> {
    use std::os::unix::process::CommandExt;
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(cwd)
        .env("FC_SERVER_PORT", port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(Plain)
}

/// Kills the fixture (and its group) and reaps it: how long that took.
fn kill_wait(p: Plain) -> Duration {
    let t = Instant::now();
    drop(p);
    t.elapsed()
}

/// Plain fork+exec of `cmd` to its first response, and kill-to-reaped.
pub fn plain_cold(cmd: &[String], cwd: &Path, workload: &str, n: usize, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
    for _ in 0..n {
        let port = free_port();
        let t = Instant::now();
        let child = spawn_plain(cmd, cwd, port, &[])?;
        let mut c = Conn::open_when_ready(&format!("127.0.0.1:{port}"), Instant::now() + Duration::from_secs(30))?;
        c.post("/invoke", b"")?;
        raw.push("plain", "cold_start", workload, t.elapsed().as_secs_f64() * 1e6);
        drop(c);
        raw.push("plain", "teardown", workload, kill_wait(child).as_secs_f64() * 1e6);
        tick();
    }
    Ok(())
}

/// The plain baseline of a handler function's cold start: `python3 -c 'import index'` in its
/// code directory, to the interpreter's exit (the module loaded, nothing served).
pub fn plain_import(code_dir: &Path, workload: &str, n: usize, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
    for _ in 0..n {
        let t = Instant::now();
        let status = std::process::Command::new("/usr/bin/python3").args(["-c", "import index"]).current_dir(code_dir).status()?;
        ensure!(status.success(), "python3 -c 'import index' failed in {}: {status}", code_dir.display());
        raw.push("plain", "cold_start", workload, t.elapsed().as_secs_f64() * 1e6);
        tick();
    }
    Ok(())
}

/// Direct requests to a running fixture, `gap` apart (the warm-invoke baseline), and
/// closed-loop throughput.
pub fn plain_warm(fixture: &Path, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<(f64, f64)> {
    let port = free_port();
    let child = spawn_plain(&[fixture.display().to_string()], Path::new("/"), port, &[])?;
    let addr = format!("127.0.0.1:{port}");
    let mut c = Conn::open_when_ready(&addr, Instant::now() + Duration::from_secs(10))?;
    c.post("/invoke", b"")?;
    for _ in 0..plan.warm_n {
        std::thread::sleep(plan.warm_gap);
        let t = Instant::now();
        c.post("/invoke", b"")?;
        raw.push("plain", "warm_invoke", "native", t.elapsed().as_secs_f64() * 1e6);
        tick();
    }
    let c1 = super::fcsup::closed_loop(&addr, "/invoke", 1, plan.rps_duration)?;
    let c16 = super::fcsup::closed_loop(&addr, "/invoke", 16, plan.rps_duration)?;
    kill_wait(child);
    Ok((c1, c16))
}

/// Closed-loop throughput through HAProxy (Debian's `haproxy`, HTTP mode, connections to the
/// fixture kept alive and shared) in front of the same fixture: what a production proxy's hop
/// costs, the peer of fcsup's pass-through. `None` when HAProxy is not installed.
pub fn haproxy_warm(fixture: &Path, plan: &Plan) -> Result<Option<(f64, f64)>> {
    let Some(bin) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().map(Path::new).find(|p| p.exists()) else { return Ok(None) };
    let (port, front) = (free_port(), free_port());
    let child = spawn_plain(&[fixture.display().to_string()], Path::new("/"), port, &[])?;
    let dir = std::env::temp_dir().join(format!("fcsup-bench-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("haproxy.cfg");
    // One thread per core as fcsup's runtime has; timeouts only so that HAProxy accepts the file.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n  server fixture 127.0.0.1:{port}\n"
        ),
    )?;
    let proxy = spawn_plain(&[bin.display().to_string(), "-db".into(), "-f".into(), cfg.display().to_string()], &dir, front, &[]);
    let proxy = proxy?;
    let addr = format!("127.0.0.1:{front}");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Ready when a request passes through (the port may accept before the backend is up).
    loop {
        match Conn::open_when_ready(&addr, deadline).and_then(|mut c| c.post("/invoke", b"")) {
            Ok(a) if a.status == 200 => break,
            _ if Instant::now() > deadline => {
                kill_wait(proxy);
                kill_wait(child);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(failed!("HAProxy in front of the fixture did not answer within 10 s"));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let c1 = super::fcsup::closed_loop(&addr, "/invoke", 1, plan.rps_duration);
    let c16 = super::fcsup::closed_loop(&addr, "/invoke", 16, plan.rps_duration);
    kill_wait(proxy);
    kill_wait(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some((c1?, c16?)))
}

fn waitpid(pid: i32, flags: WaitPidFlag) {
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(flags));
}

fn signal(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// SIGSTOP/SIGCONT of the main pid around each request, confirmed by waitpid (the group
/// stop completes when every thread stopped).
pub fn sigstop(fixture: &Path, busy: usize, workload: &str, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
    let port = free_port();
    let threads = busy.to_string();
    let child = spawn_plain(&[fixture.display().to_string()], Path::new("/"), port, &[("FIXTURE_BUSY_THREADS", &threads)])?;
    let pid = pid(child.id()).as_raw();
    let mut c = Conn::open_when_ready(&format!("127.0.0.1:{port}"), Instant::now() + Duration::from_secs(10))?;
    c.post("/invoke", b"")?;
    signal(pid, Signal::SIGSTOP);
    waitpid(pid, WaitPidFlag::WUNTRACED);
    for _ in 0..plan.freeze_n {
        std::thread::sleep(plan.gap);
        let t = Instant::now();
        signal(pid, Signal::SIGCONT);
        waitpid(pid, WaitPidFlag::WCONTINUED);
        raw.push("sigstop", "thaw", workload, t.elapsed().as_secs_f64() * 1e6);
        c.post("/invoke", b"")?;
        let t = Instant::now();
        signal(pid, Signal::SIGSTOP);
        waitpid(pid, WaitPidFlag::WUNTRACED);
        raw.push("sigstop", "freeze", workload, t.elapsed().as_secs_f64() * 1e6);
        tick();
    }
    signal(pid, Signal::SIGCONT);
    kill_wait(child);
    Ok(())
}

/// A child's pid as the kernel's signed type (pid_max is at most 2^22).
fn pid_raw(id: u32) -> i32 {
    i32::try_from(id).expect("a pid fits in i32")
}

/// A child's pid.
fn pid(id: u32) -> Pid {
    Pid::from_raw(pid_raw(id))
}

/// CPU ticks (user + system) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    procfs::process::Process::new(pid_raw(pid)).and_then(|p| p.stat()).map(|s| s.utime + s.stime).unwrap_or(0)
}

/// Whether the fixture's child process keeps running while its parent is SIGSTOPped.
pub fn sigstop_child_runs(fixture: &Path) -> Result<bool> {
    let port = free_port();
    let child = spawn_plain(&[fixture.display().to_string()], Path::new("/"), port, &[("FIXTURE_CHILD", "1")])?;
    let pid = child.id();
    Conn::open_when_ready(&format!("127.0.0.1:{port}"), Instant::now() + Duration::from_secs(10))?;
    // The fixture may start listening before its child is forked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let kid: u32 = loop {
        let kids = procfs::process::Process::new(pid_raw(pid)).and_then(|p| p.task_main_thread()).and_then(|t| t.children()).unwrap_or_default();
        if let Some(&k) = kids.first() {
            break k;
        }
        if Instant::now() > deadline {
            return Err(failed!("the fixture started no child"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    signal(pid_raw(pid), Signal::SIGSTOP);
    waitpid(pid_raw(pid), WaitPidFlag::WUNTRACED);
    let before = cpu_ticks(kid);
    std::thread::sleep(Duration::from_millis(300));
    let ran = cpu_ticks(kid) > before;
    signal(pid_raw(kid), Signal::SIGKILL);
    signal(pid_raw(pid), Signal::SIGCONT);
    kill_wait(child);
    Ok(ran)
}

/// An OCI runtime CLI (`crun` or `runc`) and the bundles it runs the fixture from.
pub struct Runtime {
    /// `crun` or `runc`.
    pub name: String,
    work: PathBuf,
    fixture: PathBuf,
    seq: u32,
}

impl Runtime {
    /// The runtime `name` when installed, with a scratch directory.
    pub fn find(name: &str, fixture: &Path) -> Option<Runtime> {
        let ok = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        let work = std::env::temp_dir().join(format!("fcsup-bench-{name}-{}", std::process::id()));
        ok.then(|| Runtime { name: name.into(), work, fixture: fixture.into(), seq: 0 })
    }

    fn cli(&self, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
        Command::new(&self.name).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status()
    }

    /// A bundle: the runtime's own default spec (`<rt> spec`), with the fixture in a read-only
    /// rootfs that also binds the host's /usr and /lib* read-only (as fcsup's sandbox does),
    /// no terminal, and host networking (so the client reaches it directly; fcsup's instances
    /// have their own network namespace, so this favours the peer).
    fn bundle(&mut self, port: u16, busy: usize) -> Result<(PathBuf, String)> {
        self.seq += 1;
        let id = format!("fcsup-bench-{}-{}-{}", self.name, std::process::id(), self.seq);
        let dir = self.work.join(&id);
        let rootfs = dir.join("rootfs");
        for d in ["proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(&self.fixture, rootfs.join("fcsup-fixture"))?;
        let st = Command::new(&self.name).arg("spec").current_dir(&dir).status()?;
        ensure!(st.success(), "{} spec failed", self.name);
        let path = dir.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/fcsup-fixture"]);
        spec["process"]["env"] = serde_json::json!(["PATH=/", format!("FC_SERVER_PORT={port}"), format!("FIXTURE_BUSY_THREADS={busy}")]);
        spec["root"]["readonly"] = true.into();
        // The host's libraries, read-only as in fcsup's sandbox, for a fixture built dynamic.
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for d in ["/usr", "/lib", "/lib64"] {
                if Path::new(d).is_dir() {
                    std::fs::create_dir_all(rootfs.join(&d[1..]))?;
                    mounts.push(serde_json::json!({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}));
                }
            }
        }
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok((dir, id))
    }

    /// `<rt> run [-d] --bundle DIR ID`, quiet.
    fn run_cmd(&self, detached: bool, dir: &Path, id: &str) -> Command {
        let mut c = Command::new(&self.name);
        c.arg("run");
        if detached {
            c.arg("-d");
        }
        c.arg("--bundle").arg(dir).arg(id).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    fn remove(&self, id: &str, dir: &Path) {
        let _ = self.cli(&["kill", id, "KILL"]);
        let _ = self.cli(&["delete", "-f", id]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The image's bundle (`umoci unpack`, its rootfs the image's) set up to run the fixture on
    /// `port` with host networking, as [`Runtime::bundle`]'s; reused by every call.
    fn image_bundle(&mut self, bundle: &Path, port: u16) -> Result<String> {
        self.seq += 1;
        let id = format!("fcsup-bench-{}-{}-{}", self.name, std::process::id(), self.seq);
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/fcsup-fixture"]);
        spec["process"]["env"] = serde_json::json!(["PATH=/", format!("FC_SERVER_PORT={port}")]);
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(id)
    }

    /// `<rt> run` per call to the first response (`s local`'s model), and teardown; from the
    /// fixture's image bundle (workload `image`) when `image` is given.
    pub fn cold(&mut self, n: usize, image: Option<&Path>, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
        let workload = if image.is_some() { "image" } else { "native" };
        for _ in 0..n {
            let port = free_port();
            let (dir, id) = match image {
                Some(b) => (b.to_path_buf(), self.image_bundle(b, port)?),
                None => self.bundle(port, 0)?,
            };
            // The image's bundle is kept for the next call.
            let owned = image.is_none();
            let t = Instant::now();
            let mut child = self.run_cmd(false, &dir, &id).spawn()?;
            let ready = Conn::open_when_ready(&format!("127.0.0.1:{port}"), Instant::now() + Duration::from_secs(30));
            let answered = ready.and_then(|mut c| c.post("/invoke", b""));
            if let Err(e) = answered {
                let _ = child.kill();
                let _ = child.wait();
                let _ = self.cli(&["kill", &id, "KILL"]);
                let _ = self.cli(&["delete", "-f", &id]);
                if owned {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                bail!("{} run did not serve: {e}", self.name);
            }
            raw.push(&self.name, "cold_start", workload, t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let _ = self.cli(&["kill", &id, "KILL"]);
            let _ = child.wait();
            let _ = self.cli(&["delete", "-f", &id]);
            raw.push(&self.name, "teardown", workload, t.elapsed().as_secs_f64() * 1e6);
            if owned {
                let _ = std::fs::remove_dir_all(&dir);
            }
            tick();
        }
        Ok(())
    }

    /// A container started once, `resume` → request → `pause` per call (OpenWhisk's model):
    /// each CLI call as a freeze/thaw sample, the three together as a warm invocation.
    pub fn pause_resume(&mut self, busy: usize, workload: &str, plan: &Plan, raw: &mut Raw, tick: &dyn Fn()) -> Result<()> {
        let port = free_port();
        let (dir, id) = self.bundle(port, busy)?;
        let st = self.run_cmd(true, &dir, &id).status()?;
        let result = (|| -> Result<()> {
            ensure!(st.success(), "{} run -d failed", self.name);
            let mut c = Conn::open_when_ready(&format!("127.0.0.1:{port}"), Instant::now() + Duration::from_secs(30))?;
            c.post("/invoke", b"")?;
            ensure!(self.cli(&["pause", &id])?.success(), "{} pause failed", self.name);
            for _ in 0..plan.freeze_n {
                std::thread::sleep(plan.gap);
                let t = Instant::now();
                self.cli(&["resume", &id])?;
                let resumed = t.elapsed();
                c.post("/invoke", b"")?;
                let t2 = Instant::now();
                self.cli(&["pause", &id])?;
                raw.push(&self.name, "thaw", workload, resumed.as_secs_f64() * 1e6);
                raw.push(&self.name, "freeze", workload, t2.elapsed().as_secs_f64() * 1e6);
                if busy == 0 {
                    raw.push(&self.name, "warm_invoke", "native", t.elapsed().as_secs_f64() * 1e6);
                }
                tick();
            }
            let _ = self.cli(&["resume", &id]);
            Ok(())
        })();
        self.remove(&id, &dir);
        result
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
