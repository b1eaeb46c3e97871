//! Node mode against a real etcd: two `fcsup serve --etcd` nodes follow one prefix. A file
//! pushed with `fcsup functions push`, a function PUT through one node's admin API, a change and
//! a DELETE all reach both nodes; a value that does not parse changes nothing; with etcd killed
//! both keep serving and say so (`GET /admin/source`, one log line), and after etcd restarts
//! the change made meanwhile (then compacted away) is applied.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, http_unix, wait_for, Resp};

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A single-member etcd on loopback ports, killed and its data removed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    url: String,
    peer: String,
}

impl Etcd {
    fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            url: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
        };
        e.spawn();
        e
    }

    /// Starts (again) on the same data and ports, and waits until it answers.
    fn spawn(&mut self) {
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer, "--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("t={}", self.peer)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        wait_for("etcd answering", WAIT, || self.ctl(&["endpoint", "health"]).ok());
    }

    fn kill(&mut self) {
        let mut c = self.child.take().expect("etcd runs");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Runs `etcdctl` against this etcd; its standard output, or its error.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("/usr/bin/etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", &self.url]).args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `fcsup serve --etcd` node with its own cgroup root, port, admin socket and files.
struct Node {
    child: Option<Child>,
    addr: String,
    admin: PathBuf,
    cgroup_root: String,
    _dir: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn start(name: &str, etcd: &Etcd, prefix: &str) -> Node {
        Self::start_with(name, etcd, prefix, &[])
    }

    fn start_with(name: &str, etcd: &Etcd, prefix: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cgroup_root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
        let addr = format!("127.0.0.1:{}", free_port());
        let d = dir.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fcsup"))
            .args(["serve", "--etcd", &etcd.url, "--etcd-prefix", prefix, "--node-name", name, "--listen", &addr, "--cgroup-root", &cgroup_root])
            .arg("--log-dir")
            .arg(d.join("logs"))
            .arg("--queue-db")
            .arg(d.join("async.db"))
            .arg("--ledger")
            .arg(d.join("ledger.jsonl"))
            .args(extra)
            .env("FCSUP_LOG", "fcsup=info,fcsup::etcd=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fcsup");
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        let admin = Path::new("/run/fcsup").join(&cgroup_root).join("admin.sock");
        let mut node = Node { child: Some(child), addr, admin, cgroup_root, _dir: dir, output };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(&node.addr).is_err() || std::os::unix::net::UnixStream::connect(&node.admin).is_err() {
            if let Some(s) = node.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node {name} exited with {s}:\n{}", node.output().join("\n"));
            }
            assert!(Instant::now() < deadline, "node {name} did not listen within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        node
    }

    fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    fn invoke(&self, function: &str, body: &str) -> Resp {
        http(&self.addr, "POST", &format!("/2023-03-30/functions/{function}/invocations"), &[], body.as_bytes())
    }

    /// The function's `VERSION` variable as an instance sees it, once it answers 200.
    fn version(&self, function: &str) -> Option<String> {
        let r = self.invoke(function, r#"{"op":"env"}"#);
        (r.status == 200).then(|| r.json()["env"]["VERSION"].as_str().unwrap_or_default().to_string())
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        http_unix(&self.admin, method, path, &[], body.as_bytes())
    }

    fn source(&self) -> String {
        self.admin("GET", "/admin/source", "").json()["state"].as_str().unwrap_or_default().to_string()
    }

    fn lines(&self, needle: &str) -> usize {
        self.output().iter().filter(|l| l.contains(needle)).count()
    }

    /// SIGTERM; asserts a clean exit and that the cgroup root is gone.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        common::signal(&c, libc::SIGTERM);
        let status = wait_for("node exit", Duration::from_secs(30), || c.try_wait().unwrap());
        assert!(status.success(), "node exited with {status}:\n{}", self.output().join("\n"));
        assert!(!common::cgroup2_mount().join(&self.cgroup_root).exists(), "cgroup root {} left behind", self.cgroup_root);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            common::signal(&c, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The fixture's props with `VERSION` set, its code given as `code`.
fn props(code: &str, version: &str) -> String {
    format!(
        r#"{{"code":"{code}","memorySize":128,"timeout":10,"environmentVariables":{{"VERSION":"{version}","FIXTURE_QUIET":"1"}},"customRuntimeConfig":{{"command":["/usr/bin/python3","server.py"]}}}}"#
    )
}

fn etcd_installed() -> bool {
    if Path::new("/usr/bin/etcd").exists() && Path::new("/usr/bin/etcdctl").exists() {
        return true;
    }
    assert!(std::env::var("FCSUP_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "etcd is not installed (apt-get install etcd-server)");
    eprintln!("SKIPPED: etcd is not installed");
    false
}

#[test]
fn two_nodes_follow_etcd_and_survive_losing_it() {
    if !common::privileged() || !etcd_installed() {
        return;
    }
    let mut etcd = Etcd::start();
    let prefix = format!("/fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let fixture = common::fixture_dir().display().to_string();

    // A file with a relative code path: push makes it absolute against the file's directory.
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join("code")).unwrap();
    std::fs::copy(common::fixture_dir().join("server.py"), project.path().join("code/server.py")).unwrap();
    let yaml = "edition: 3.0.0\nvars:\n  version: \"1\"\nresources:\n  hello:\n    component: fc3\n    props:\n      code: ./code\n      memorySize: 128\n      timeout: 10\n      environmentVariables:\n        VERSION: ${vars.version}\n        FIXTURE_QUIET: \"1\"\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n";
    std::fs::write(project.path().join("s.yaml"), yaml).unwrap();
    let url = etcd.url.clone();
    let push = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fcsup"))
            .args(["functions", "push", "-f"])
            .arg(project.path().join("s.yaml"))
            .args(["--etcd", &url, "--etcd-prefix", &prefix])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(push(&[]).contains("pushed 1 function(s)"));
    let stored = etcd.ctl(&["get", "--print-value-only", &format!("{prefix}/functions/hello")]).unwrap();
    let stored: serde_json::Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(stored["code"], project.path().join("code").display().to_string(), "made absolute");
    assert_eq!(stored["environmentVariables"]["VERSION"], "1", "variables resolved");

    let mut n1 = Node::start("n1", &etcd, &prefix);
    let mut n2 = Node::start("n2", &etcd, &prefix);
    for n in [&n1, &n2] {
        assert_eq!(n.version("hello").as_deref(), Some("1"), "the pushed function is served");
        assert_eq!(n.source(), "connected");
    }

    // Defined through node 1's admin API, served by node 2.
    let r = n1.admin("PUT", "/admin/functions/second", &props(&fixture, "a"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(n1.version("second").as_deref(), Some("a"), "applied on node 1 before the answer");
    assert_eq!(wait_for("node 2 serves second", WAIT, || n2.version("second")), "a");
    // A body that does not validate is refused before etcd sees it.
    let r = n1.admin("PUT", "/admin/functions/second", r#"{"memorySize": 7}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["Code"], "InvalidArgument", "{}", r.text());

    // A changed function gets new instances on both nodes.
    let before: Vec<String> = [&n1, &n2].iter().map(|n| n.invoke("hello", "{}").header("x-fc-instance-id").to_string()).collect();
    let r = n2.admin("PUT", "/admin/functions/hello", &props(&fixture, "2"));
    assert_eq!(r.status, 200, "{}", r.text());
    for (n, old) in [&n1, &n2].into_iter().zip(&before) {
        wait_for("VERSION 2 everywhere", WAIT, || (n.version("hello").as_deref() == Some("2")).then_some(()));
        assert_ne!(&n.invoke("hello", "{}").header("x-fc-instance-id").to_string(), old, "a new instance");
    }

    // DELETE removes it from both.
    let r = n1.admin("DELETE", "/admin/functions/second", "");
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&n1, &n2] {
        wait_for("second gone", WAIT, || (n.invoke("second", "{}").status == 404).then_some(()));
    }
    assert_eq!(n1.admin("DELETE", "/admin/functions/second", "").status, 404);

    // A value that does not parse, written straight to etcd, changes nothing.
    etcd.ctl(&["put", &format!("{prefix}/functions/hello"), r#"{"memorySize": 7}"#]).unwrap();
    for n in [&n1, &n2] {
        wait_for("the bad value logged", WAIT, || (n.lines("function hello does not parse") > 0).then_some(()));
        assert_eq!(n.version("hello").as_deref(), Some("2"), "still served as it was");
    }

    // etcd lost: both keep serving and say so, once.
    etcd.kill();
    for n in [&n1, &n2] {
        wait_for("source lost", WAIT, || (n.source() == "lost").then_some(()));
        assert_eq!(n.version("hello").as_deref(), Some("2"));
    }
    for n in [&n1, &n2] {
        wait_for("reconnecting, retried", WAIT, || (n.lines("etcd still unreachable") >= 2).then_some(()));
    }
    // While it is away a PUT cannot be stored, and says so.
    let r = n1.admin("PUT", "/admin/functions/hello", &props(&fixture, "x"));
    assert_eq!(r.status, 503, "{}", r.text());

    // Back, with a change made before the nodes reconnect and its history compacted away.
    etcd.spawn();
    etcd.ctl(&["put", &format!("{prefix}/functions/hello"), &props(&fixture, "3")]).unwrap();
    etcd.ctl(&["put", &format!("{prefix}/functions/extra"), &props(&fixture, "e")]).unwrap();
    let status = etcd.ctl(&["endpoint", "status", "--write-out", "json"]).unwrap();
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]["header"]["revision"].as_i64().unwrap();
    etcd.ctl(&["compact", &revision.to_string()]).unwrap();
    for n in [&n1, &n2] {
        wait_for("VERSION 3 after etcd is back", WAIT, || (n.version("hello").as_deref() == Some("3")).then_some(()));
        wait_for("source connected", WAIT, || (n.source() == "connected").then_some(()));
        assert_eq!(n.version("extra").as_deref(), Some("e"));
        assert_eq!(n.lines("lost etcd"), 1, "the loss logged once, not per retry:\n{}", n.output().join("\n"));
    }

    // push --prune: the file's functions only.
    assert!(push(&["--prune"]).contains("pruned 1: extra"));
    for n in [&n1, &n2] {
        wait_for("extra pruned", WAIT, || (n.invoke("extra", "{}").status == 404).then_some(()));
        wait_for("hello as the file says", WAIT, || (n.version("hello").as_deref() == Some("1")).then_some(()));
    }
    n1.stop();
    n2.stop();
}

#[test]
fn delete_in_file_mode_removes_until_the_next_reload() {
    let Some(mut f) = common::serve_if_privileged(&common::fixture_props("gone", "")) else { return };
    assert_eq!(f.invoke("gone", "{}").status, 200);
    let r = f.admin("DELETE", "/admin/functions/gone", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.invoke("gone", "{}").status, 404);
    assert_eq!(f.admin("DELETE", "/admin/functions/gone", b"").status, 404);
    assert_eq!(f.admin("GET", "/admin/source", b"").json()["state"], "local");
    f.hangup();
    wait_for("the file's function back after SIGHUP", WAIT, || (f.invoke("gone", "{}").status == 200).then_some(()));
    f.stop_and_check_clean();
}

#[test]
fn a_node_signs_in_to_an_etcd_with_authentication_and_refuses_relative_paths() {
    if !common::privileged() || !etcd_installed() {
        return;
    }
    let etcd = Etcd::start();
    let prefix = format!("/fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let fixture = common::fixture_dir().display().to_string();
    etcd.ctl(&["user", "add", "root:s3cret"]).unwrap();
    etcd.ctl(&["auth", "enable"]).unwrap();
    let as_root = |args: &[&str]| etcd.ctl(&[&["--user", "root:s3cret"], args].concat());
    as_root(&["put", &format!("{prefix}/functions/good"), &props(&fixture, "v1")]).unwrap();
    // Written by hand with a relative path: a node would resolve it against its own directory.
    as_root(&["put", &format!("{prefix}/functions/rel"), &props("code", "v1")]).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("etcd-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Without the user, node mode cannot start (etcd refuses the read).
    let out = Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["serve", "--etcd", &etcd.url, "--etcd-prefix", &prefix, "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--cgroup-root", &format!("fcsup-test-{}", uuid::Uuid::new_v4().simple())])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a node without credentials started");
    assert!(String::from_utf8_lossy(&out.stderr).contains("node mode cannot start"), "{}", String::from_utf8_lossy(&out.stderr));

    let pw_arg = pw.display().to_string();
    let mut node = Node::start_with("auth", &etcd, &prefix, &["--etcd-user", "root", "--etcd-password-file", &pw_arg]);
    assert_eq!(node.invoke("good", "").status, 200);
    assert_eq!(node.invoke("rel", "").status, 404, "a function with a relative code path was served");
    let refused = node.output().iter().any(|l| l.contains("rel") && l.contains("relative path"));
    assert!(refused, "no word of the refused value: {}", node.output().join("\n"));
    // A world-readable password file is refused.
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["serve", "--etcd", &etcd.url, "--etcd-prefix", &prefix, "--etcd-user", "root", "--etcd-password-file", &pw_arg])
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--cgroup-root", &format!("fcsup-test-{}", uuid::Uuid::new_v4().simple())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("world-readable"), "{}", String::from_utf8_lossy(&out.stderr));
    node.stop();
}
