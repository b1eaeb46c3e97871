//! Harness for the privileged tests: runs the real `fcsup serve` binary with its own cgroup
//! root, talks HTTP to it (`/admin/` over its admin Unix socket, everything else over TCP),
//! reads its output, and checks that nothing is left behind.
#![allow(dead_code)]

pub mod devices;
pub mod image;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// True when the host can run privileged tests; otherwise prints why and returns false,
/// or panics when `FCSUP_REQUIRE_PRIVILEGED=1` (CI), so a skip there is a failure.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cg2 = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(" - cgroup2 ");
    let why = if !root {
        "not running as root"
    } else if !cg2 {
        "no cgroup2 mount"
    } else {
        return true;
    };
    if std::env::var("FCSUP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("privileged test cannot run: {why} (FCSUP_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED: privileged test needs root and cgroup2: {why}");
    false
}

/// The hostile fixture function's code directory (tries to escape; see its server.py).
pub fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/hostile")
}

/// A `props` block for the hostile fixture with `memory_mb` of memory.
pub fn hostile_props(name: &str, memory_mb: u64) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: {memory_mb}\n      timeout: 30\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        hostile_dir().display()
    )
}

/// The fixture function's code directory.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/fixture")
}

/// A `props` block for the fixture with `extra` YAML lines appended (indented 6 spaces).
pub fn fixture_props(name: &str, extra: &str) -> String {
    let mut s = format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 1024\n      cpu: 1\n      timeout: 10\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        fixture_dir().display()
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// A running `fcsup serve`.
pub struct Fcsup {
    child: Option<Child>,
    pub addr: String,
    /// Its admin socket (`/admin/` is served there).
    pub admin_socket: PathBuf,
    pub cgroup_root: String,
    pub dir: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
    /// Every instance pid the test has seen, checked to be gone after fcsup exits.
    seen_pids: Mutex<std::collections::HashSet<i64>>,
    /// Extra CLI arguments.
    args: Vec<String>,
    /// Extra environment variables.
    env: Vec<(String, String)>,
}

/// Whether `GET /metrics` on `addr` gets an answer.
fn answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut out = Vec::new();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_ok()
        && s.read_to_end(&mut out).is_ok()
        && out.starts_with(b"HTTP/1.1 200")
}

/// The admin socket of each fcsup this harness started, by its TCP address: [`http`] sends
/// `/admin/` requests for that address there.
static ADMIN_SOCKETS: LazyLock<Mutex<HashMap<String, PathBuf>>> = LazyLock::new(Mutex::default);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where cgroup2 is mounted on this host.
pub fn cgroup2_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi.lines().find(|l| l.contains(" - cgroup2 ")).expect("cgroup2 mount");
    PathBuf::from(line.split(' ').nth(4).unwrap())
}

/// Runs `fcsup serve` on the file `yaml` with extra `args`, expecting it to fail at start;
/// returns its standard error.
pub fn serve_failing(yaml: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fcsup")).args(["serve", "-f"]).arg(&file).args(args).output().unwrap();
    assert!(!out.status.success(), "fcsup started on a file it should refuse");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Serves `resources` when the host can run privileged tests (see [`privileged`]); `None`
/// means the test is skipped.
pub fn serve_if_privileged(resources: &str) -> Option<Fcsup> {
    privileged().then(|| Fcsup::serve(resources))
}

impl Fcsup {
    /// Serves an s.yaml whose `resources:` section is `resources`.
    pub fn serve(resources: &str) -> Fcsup {
        Self::serve_file(&format!("edition: 3.0.0\nresources:\n{resources}"), &[])
    }

    /// Serves the given whole file; `args` are extra CLI arguments.
    pub fn serve_file(yaml: &str, args: &[&str]) -> Fcsup {
        Self::serve_file_env(yaml, args, &[])
    }

    /// Serves the given whole file with extra CLI arguments and environment variables.
    pub fn serve_file_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Fcsup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.yaml"), yaml).unwrap();
        let cgroup_root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
        let admin_socket = match args.iter().position(|a| *a == "--admin-socket") {
            Some(i) => PathBuf::from(args[i + 1]),
            None => Path::new("/run/fcsup").join(&cgroup_root).join("admin.sock"),
        };
        let mut f = Fcsup {
            child: None,
            addr: String::new(),
            admin_socket,
            cgroup_root,
            dir,
            output: Arc::default(),
            seen_pids: Mutex::default(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        f.spawn();
        f
    }

    /// Starts `fcsup serve` on this test's file, ledger and log directory.
    fn spawn(&mut self) {
        let port = free_port();
        let d = self.dir.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fcsup"))
            .args(["serve", "-f"])
            .arg(d.join("s.yaml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--cgroup-root", &self.cgroup_root, "--ledger"])
            .arg(d.join("ledger.jsonl"))
            .arg("--log-dir")
            .arg(d.join("logs"))
            .arg("--queue-db")
            .arg(d.join("async.db"))
            .args(&self.args)
            .env("FCSUP_LOG", "fcsup=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fcsup");
        for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let out = self.output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        self.addr = format!("127.0.0.1:{port}");
        self.child = Some(child);
        ADMIN_SOCKETS.lock().unwrap().insert(self.addr.clone(), self.admin_socket.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        // fcsup binds its port before it starts the supervisor (minimum instances…), so a
        // connection alone does not mean ready: an answer does.
        while !answers(&self.addr) || UnixStream::connect(&self.admin_socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("fcsup exited with {status} before listening:\n{}", self.output().join("\n"));
            }
            assert!(Instant::now() < deadline, "fcsup did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills fcsup with SIGKILL (no shutdown at all) and reaps it; `restart_after_kill` then
    /// starts it again on the same cgroup root.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts fcsup again after [`Fcsup::kill_hard`].
    pub fn restart_after_kill(&mut self) {
        assert!(self.child.is_none(), "fcsup still runs");
        self.spawn();
    }

    /// Stops fcsup (checking it left nothing behind) and starts it again on the same file,
    /// ledger and cgroup root.
    pub fn restart(&mut self) {
        self.stop_and_check_clean();
        self.spawn();
    }

    /// The served s.yaml (rewrite it, then [`Fcsup::hangup`] to reload).
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("s.yaml")
    }

    /// The per-function log file of `name`.
    pub fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends SIGHUP (reload the file).
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGHUP);
    }

    /// fcsup's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// All output lines so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits until some output line satisfies `pred`.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.output().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(Instant::now() < deadline, "no output line {what} within {timeout:?}:\n{}", self.output().join("\n"));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Invokes `name` through the FC 3.0 API.
    pub fn invoke(&self, name: &str, body: &str) -> Resp {
        http(&self.addr, "POST", &format!("/2023-03-30/functions/{name}/invocations"), &[], body.as_bytes())
    }

    /// Sends `n` invocations of `name` at once (the i-th after `stagger * i`); each response
    /// with how long it took, in order.
    pub fn invoke_concurrently(&self, name: &str, body: &str, n: usize, stagger: Duration) -> Vec<(Resp, Duration)> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (addr, body) = (self.addr.clone(), body.to_string());
                let path = format!("/2023-03-30/functions/{name}/invocations");
                std::thread::spawn(move || {
                    std::thread::sleep(stagger * u32::try_from(i).expect("a test sends fewer than 2^32 requests"));
                    let t = Instant::now();
                    let r = http(&addr, "POST", &path, &[], body.as_bytes());
                    (r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Invokes with extra headers.
    pub fn invoke_with(&self, name: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
        http(&self.addr, "POST", &format!("/2023-03-30/functions/{name}/invocations"), headers, body.as_bytes())
    }

    /// A request on the admin socket.
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        http_unix(&self.admin_socket, method, path, &[], body)
    }

    /// `GET /admin/instances` (their pids are remembered for [`Fcsup::stop_and_check_clean`]).
    pub fn instances(&self) -> Vec<serde_json::Value> {
        let list: Vec<serde_json::Value> = serde_json::from_slice(&self.admin("GET", "/admin/instances", b"").body).unwrap();
        self.seen_pids.lock().unwrap().extend(list.iter().filter_map(|i| i["pid"].as_i64()));
        list
    }

    /// Invokes `name` once (a cold start when none runs) and returns the cgroup of the
    /// instance that served it, once that instance is frozen again.
    pub fn warm(&self, name: &str) -> String {
        let r = self.invoke(name, "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("x-fc-instance-id");
        let inst = self.instances().into_iter().find(|i| i["id"] == id).expect("the instance that answered");
        let cgroup = inst["cgroup"].as_str().unwrap().to_string();
        wait_frozen(&cgroup);
        cgroup
    }

    /// The cgroup2 directory of the supervisor root.
    pub fn root_path(&self) -> PathBuf {
        cgroup2_mount().join(&self.cgroup_root)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the whole output.
    pub fn stop(&mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "fcsup did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(status.success(), "fcsup exited with {status}:\n{}", self.output().join("\n"));
        self.output()
    }

    /// Stops fcsup and asserts that no instance process the test saw still runs and that its
    /// cgroup root is gone.
    pub fn stop_and_check_clean(&mut self) -> Vec<String> {
        self.instances();
        let out = self.stop();
        if self.root_path().exists() {
            let left: Vec<String> = std::fs::read_dir(self.root_path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| {
                    let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default().replace('\n', " ");
                    format!("{}: events [{}] procs [{}]", e.file_name().to_string_lossy(), read("cgroup.events"), read("cgroup.procs"))
                })
                .collect();
            panic!("cgroup root {} left behind, holding {left:?}; fcsup said:\n{}", self.root_path().display(), out.join("\n"));
        }
        assert!(!self.admin_socket.exists(), "admin socket {} left behind", self.admin_socket.display());
        let run_dir = Path::new("/run/fcsup").join(&self.cgroup_root);
        assert!(
            !run_dir.exists(),
            "runtime directory {} left behind: {:?}",
            run_dir.display(),
            std::fs::read_dir(&run_dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        for pid in self.seen_pids.lock().unwrap().iter() {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "instance process {pid} left behind");
        }
        out
    }
}

impl Drop for Fcsup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to `child` (std's `Child` can only SIGKILL).
pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits in pid_t");
    // SAFETY: kill(2) takes no pointers; the pid is our own child's.
    unsafe { libc::kill(pid, sig) };
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`: over TCP to `addr`, except that `/admin/`
/// paths of an fcsup this harness started go to its admin socket.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    if path.starts_with("/admin") {
        if let Some(sock) = ADMIN_SOCKETS.lock().unwrap().get(addr).cloned() {
            return http_unix(&sock, method, path, headers, body);
        }
    }
    http_tcp(addr, method, path, headers, body)
}

/// One request over TCP, whatever the path.
pub fn http_tcp(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    exchange(s, addr, method, path, headers, body)
}

/// One request over the Unix socket `socket`.
pub fn http_unix(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    exchange(s, "localhost", method, path, headers, body)
}

fn exchange(mut s: impl Read + Write, host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// Parses a whole HTTP/1.1 response (chunked bodies decoded).
pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

/// Polls `f` every 10 ms until it returns `Some`, failing after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `cgroup.events` of an instance's cgroup path.
pub fn events(cgroup: &str) -> String {
    std::fs::read_to_string(Path::new(cgroup).join("cgroup.events")).unwrap_or_default()
}

/// `usage_usec` of an instance's cgroup.
pub fn usage_usec(cgroup: &str) -> u64 {
    let s = std::fs::read_to_string(Path::new(cgroup).join("cpu.stat")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap().trim().parse().unwrap()
}

/// Waits until the instance's cgroup says `frozen 1`.
pub fn wait_frozen(cgroup: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(cgroup).contains("frozen 1") {
        assert!(Instant::now() < deadline, "{cgroup} not frozen within 10 s: {}", events(cgroup));
        std::thread::sleep(Duration::from_millis(2));
    }
}
