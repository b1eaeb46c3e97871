//! A one-machine fcsup cluster (issue 17): per node a network namespace linked to a host
//! bridge, one `fcsup serve` in it with its own cgroup root, etcd and HAProxy on the host.
//! [`Cluster`] tears all of it down when dropped, also after a failure halfway through
//! starting, and [`Cluster::teardown`] says what, if anything, it could not remove.

pub mod haproxy;
pub mod load;
pub mod net;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http::{Conn, Target};
use net::Net;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: usize,
    /// The fcsup binary (`fcsup-init` must lie next to it).
    pub fcsup: PathBuf,
    /// An s.yaml whose functions are pushed to etcd, for every node to serve.
    pub functions: PathBuf,
    /// HAProxy's port on the host's bridge address.
    pub port: u16,
    /// Each node's `--drain-seconds`.
    pub drain_seconds: u64,
    /// HAProxy's health-check interval.
    pub check_ms: u64,
    /// HAProxy's bounded load (`fcsup haproxy-config --hash-balance-factor`); `None`: its default.
    pub balance_factor: Option<u32>,
    /// Extra `fcsup serve` arguments for every node.
    pub node_args: Vec<String>,
}

impl Spec {
    pub fn new(nodes: usize, fcsup: &Path, functions: &Path) -> Spec {
        Spec {
            nodes,
            fcsup: fcsup.into(),
            functions: functions.into(),
            port: 9000,
            drain_seconds: 0,
            check_ms: 200,
            balance_factor: None,
            node_args: Vec::new(),
        }
    }
}

/// One node.
#[derive(Debug)]
pub struct Node {
    /// `node<i>`: its `--node-name` and its server name in HAProxy.
    pub name: String,
    pub netns: String,
    /// `IP:9100` in its namespace, reachable from the host.
    pub addr: String,
    pub cgroup_root: String,
    pub admin_socket: PathBuf,
    /// Its ledger, logs, queue database and output (`fcsup.log`, kept over restarts).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// fcsup's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("fcsup.log")).unwrap_or_default()
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub spec: Spec,
    /// etcd's data, HAProxy's configuration and socket, the nodes' directories.
    pub dir: PathBuf,
    net: Net,
    /// etcd's client URL.
    pub etcd: String,
    /// HAProxy's address (`IP:port`).
    pub front: String,
    pub nodes: Vec<Node>,
    etcd_child: Option<Child>,
    haproxy: Option<Child>,
    /// Every pid the cluster started or killed, checked to be gone after teardown.
    pids: Vec<u32>,
    torn_down: bool,
}

/// The port every node listens on in its own namespace.
pub const NODE_PORT: u16 = 9100;

impl Cluster {
    /// Starts everything and waits until HAProxy takes every node as up.
    pub fn start(spec: Spec) -> Result<Cluster> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the cluster needs root (network namespaces, cgroups)");
        }
        if spec.nodes == 0 || spec.nodes > 240 {
            bail!("between 1 and 240 nodes");
        }
        let net = Net::claim()?;
        let run = net.run;
        Self::start_on(net, spec).with_context(|| format!("cluster run {run} did not start (torn down)"))
    }

    fn start_on(net: Net, spec: Spec) -> Result<Cluster> {
        let host = net.host_ip();
        let mut c = Cluster {
            dir: PathBuf::new(),
            etcd: format!("http://{host}:2379"),
            front: format!("{host}:{}", spec.port),
            nodes: Vec::new(),
            net,
            spec,
            etcd_child: None,
            haproxy: None,
            pids: Vec::new(),
            torn_down: false,
        };
        // From here on a failure drops `c`, which tears down what was made.
        // A fresh directory of root's alone (tempfile: random name, mode 0700), so no other
        // user can plant a file the cluster would use.
        c.dir = tempfile::Builder::new().prefix(&format!("fcsup-cluster-{}-", c.net.run)).tempdir()?.keep();
        for i in 0..c.spec.nodes {
            c.net.add_node(i)?;
            let node_dir = c.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let cgroup_root = format!("fcsup-cl-{}-{i}", c.net.run);
            c.nodes.push(Node {
                name: format!("node{i}"),
                netns: c.net.netns(i),
                addr: format!("{}:{NODE_PORT}", c.net.node_ip(i)),
                admin_socket: Path::new("/run/fcsup").join(&cgroup_root).join("admin.sock"),
                cgroup_root,
                dir: node_dir,
                child: None,
            });
        }
        c.net.guard_etcd()?;
        c.start_etcd()?;
        // Node mode: the functions live in etcd, the nodes read them from there.
        let out = Command::new(&c.spec.fcsup).args(["functions", "push", "--etcd", &c.etcd, "-f"]).arg(&c.spec.functions).output()?;
        if !out.status.success() {
            bail!("fcsup functions push failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for i in 0..c.spec.nodes {
            c.start_node(i)?;
        }
        c.start_haproxy()?;
        Ok(c)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let host = self.net.host_ip();
        let log = File::create(self.dir.join("etcd.log"))?;
        let name = format!("fcsup-cl-{}", self.net.run);
        let child = Command::new("etcd")
            .args(["--name", &name, "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &self.etcd, "--advertise-client-urls", &self.etcd])
            .args(["--listen-peer-urls", &format!("http://{host}:2380"), "--initial-advertise-peer-urls", &format!("http://{host}:2380")])
            .args(["--initial-cluster", &format!("{name}=http://{host}:2380")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start etcd")?;
        self.pids.push(child.id());
        self.etcd_child = Some(child);
        let addr = self.etcd.trim_start_matches("http://").to_string();
        self.wait("etcd to be healthy", Duration::from_secs(30), |c| {
            let ok = get(&addr, "/health").is_some_and(|(s, b)| s == 200 && b.contains("true"));
            c.check_alive().map(|()| ok)
        })
    }

    /// Starts node `i` (again, after [`Cluster::kill_node`] or [`Cluster::stop_node`]) and
    /// waits until it answers.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = File::options().create(true).append(true).open(node.dir.join("fcsup.log"))?;
        let mut cmd = Command::new("nsenter");
        // setns(CLONE_NEWNET) only: unlike `ip netns exec` it does not remount /sys, so fcsup
        // finds the host's cgroup2 mount as it would outside.
        cmd.arg(format!("--net=/run/netns/{}", node.netns)).arg("--").arg(&self.spec.fcsup).args(["serve", "--etcd", &self.etcd]);
        // HAProxy (on the host's address) appends the client to X-Forwarded-For.
        let front = self.net.host_ip().to_string();
        cmd.args(["--node-name", &node.name, "--cgroup-root", &node.cgroup_root, "--listen", &node.addr, "--trusted-proxy", &front])
            .arg("--ledger")
            .arg(node.dir.join("ledger.jsonl"))
            .arg("--log-dir")
            .arg(node.dir.join("logs"))
            .arg("--queue-db")
            .arg(node.dir.join("async.db"));
        if self.spec.drain_seconds > 0 {
            cmd.args(["--drain-seconds", &self.spec.drain_seconds.to_string()]);
        }
        let child = cmd
            .args(&self.spec.node_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        self.pids.push(child.id());
        self.nodes[i].child = Some(child);
        self.wait_node_ready(i)
    }

    /// Waits until node `i` takes requests (`/healthz` 200) and answers on its admin socket.
    pub fn wait_node_ready(&mut self, i: usize) -> Result<()> {
        let (addr, sock, name) = (self.nodes[i].addr.clone(), self.nodes[i].admin_socket.clone(), self.nodes[i].name.clone());
        self.wait(&format!("{name} to answer"), Duration::from_secs(60), |c| {
            let ok = get(&addr, "/healthz").is_some_and(|(s, _)| s == 200) && std::os::unix::net::UnixStream::connect(&sock).is_ok();
            c.check_alive().map(|()| ok)
        })
    }

    fn start_haproxy(&mut self) -> Result<()> {
        let servers: Vec<(String, String)> = self.nodes.iter().map(|n| (n.name.clone(), n.addr.clone())).collect();
        let (cfg, extra) = (self.dir.join("haproxy.cfg"), self.dir.join("haproxy-stats.cfg"));
        let mut gen = Command::new(&self.spec.fcsup);
        gen.args(["haproxy-config", "--listen", &self.front, "--check-inter", &self.spec.check_ms.to_string()]);
        for (name, addr) in &servers {
            gen.args(["--node", &format!("{name}={addr}")]);
        }
        if let Some(f) = self.spec.balance_factor {
            gen.args(["--hash-balance-factor", &f.to_string()]);
        }
        let out = gen.output()?;
        if !out.status.success() {
            bail!("fcsup haproxy-config failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&cfg, out.stdout)?;
        std::fs::write(&extra, haproxy::extra_config(&self.stats_socket()))?;
        let log = File::create(self.dir.join("haproxy.log"))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .arg("-f")
            .arg(&extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start haproxy")?;
        self.pids.push(child.id());
        self.haproxy = Some(child);
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.wait_server(&n, "UP", Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// HAProxy's stats socket.
    pub fn stats_socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    /// HAProxy's state of server `name` (`UP`, `DOWN`, `UP 1/2`…).
    pub fn server_state(&self, name: &str) -> Result<String> {
        let states = haproxy::server_states(&self.stats_socket())?;
        states.into_iter().find(|(n, _)| n == name).map(|(_, s)| s).with_context(|| format!("HAProxy has no server {name}"))
    }

    /// Waits until HAProxy says exactly `state` of server `name`; returns when it had seen it
    /// (just after the answer that said so).
    pub fn wait_server(&mut self, name: &str, state: &str, timeout: Duration) -> Result<Instant> {
        let mut seen = Instant::now();
        self.wait(&format!("HAProxy to take {name} as {state}"), timeout, |c| {
            c.check_alive()?;
            let now = c.server_state(name).is_ok_and(|s| s == state);
            seen = Instant::now();
            Ok(now)
        })?;
        Ok(seen)
    }

    /// Sends SIGKILL to node `i` and reaps it.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        let mut child = self.nodes[i].child.take().context("the node does not run")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM to node `i` and waits for it to exit (drain time plus 60 s at most).
    pub fn stop_node(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let mut child = self.nodes[i].child.take().context("the node does not run")?;
        signal(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(self.spec.drain_seconds + 60);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {:?} of SIGTERM", self.nodes[i].name, deadline.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails when a process the cluster needs running has exited.
    fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for (name, child) in [("etcd", &mut self.etcd_child), ("haproxy", &mut self.haproxy)] {
            if let Some(Ok(Some(s))) = child.as_mut().map(Child::try_wait) {
                dead.push(format!("{name} exited with {s}; see {}/{name}.log", self.dir.display()));
                *child = None;
            }
        }
        for n in &mut self.nodes {
            if let Some(Ok(Some(s))) = n.child.as_mut().map(Child::try_wait) {
                dead.push(format!("{} exited with {s}: {}", n.name, tail(&n.output())));
                n.child = None;
            }
        }
        if !dead.is_empty() {
            bail!("{}", dead.join("\n"));
        }
        Ok(())
    }

    /// Polls `f` every 10 ms until it says true, an error, or `timeout`.
    fn wait(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&mut Cluster) -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self).with_context(|| format!("waiting for {what}"))? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {what} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops HAProxy, the nodes (SIGTERM, then SIGKILL after 30 s) and etcd, removes the
    /// namespaces, links, cgroup roots, runtime and temporary directories, and checks that
    /// none of them nor any process is left.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if let Some(h) = self.haproxy.take() {
            stop(h, Duration::from_secs(5));
        }
        for n in &mut self.nodes {
            if let Some(c) = n.child.take() {
                stop(c, Duration::from_secs(30));
            }
        }
        if let Some(e) = self.etcd_child.take() {
            stop(e, Duration::from_secs(10));
        }
        let killed = self.net.teardown();
        self.pids.extend(killed.iter().filter_map(|p| p.parse::<u32>().ok()));
        let cg2 = cgroup2_mount();
        for n in &self.nodes {
            if let Some(root) = cg2.as_ref().map(|m| m.join(&n.cgroup_root)).filter(|r| r.exists()) {
                remove_cgroup(&root);
            }
            // A hybrid host's v1 hierarchies (cpu, pids, devices, …) hold the node's limits; a
            // node that was SIGKILLed left them (its tasks are gone with the cgroup2 tree).
            for root in cgroup_v1_mounts().iter().map(|m| m.join(&n.cgroup_root)).filter(|r| r.exists()) {
                remove_cgroup(&root);
            }
            let _ = std::fs::remove_dir_all(Path::new("/run/fcsup").join(&n.cgroup_root));
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let mut left = leftovers(self.net.run);
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = |pids: &[u32]| pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).copied().collect::<Vec<_>>();
        while !alive(&self.pids).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        left.extend(alive(&self.pids).into_iter().map(|p| format!("process {p}")));
        if !left.is_empty() {
            bail!("the cluster left behind: {}", left.join(", "));
        }
        Ok(())
    }

    /// The run number (the subnet's third octet, part of every name).
    pub fn run(&self) -> u8 {
        self.net.run
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps.
fn stop(mut c: Child, grace: Duration) {
    signal(c.id(), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Kills every process under a cgroup (cgroup.kill) and removes it, children first.
fn remove_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                remove_cgroup(&e.path());
            }
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What of run `run` is left on the host: network namespaces, links, cgroup roots, runtime
/// and temporary directories (processes are checked by [`Cluster::teardown`]).
pub fn leftovers(run: u8) -> Vec<String> {
    let mut left = net::leftovers(run, cgroup2_mount().as_deref());
    let prefix = format!("fcsup-cl-{run}-");
    for m in cgroup_v1_mounts() {
        let names = std::fs::read_dir(&m).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok());
        left.extend(names.filter(|n| n.starts_with(&prefix)).map(|n| format!("cgroup {}/{n}", m.display())));
    }
    left
}

/// Where the cgroup v1 hierarchies are mounted (none on a unified host).
fn cgroup_v1_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines().filter(|l| l.contains(" - cgroup ")).filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).collect()
}

/// Where cgroup2 is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find(|l| l.contains(" - cgroup2 ")).and_then(|l| l.split(' ').nth(4)).map(PathBuf::from)
}

/// One GET: its status and body, or `None` when nothing answered.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut c = Conn::new(Target::Tcp(addr.to_string()), Duration::from_secs(5));
    c.request("GET", path, &[("Connection", "close")], b"").ok().map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
