//! Privileged tests of the front (issue 17): real HAProxy 2.6 started on `fcsup haproxy-config`'s
//! output, in front of `fcsup serve` nodes on loopback, each with its own cgroup root, port and
//! admin socket. Guards stop HAProxy and every node, also when a test fails.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const HAPROXY: &str = "/usr/sbin/haproxy";

/// HAProxy, killed and reaped when dropped.
struct Haproxy {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Nodes `n0…` serving `resources` with extra `args`, and HAProxy in front of them; `None`
/// when the host cannot run privileged tests.
fn cluster(nodes: usize, resources: &str, args: &[&str]) -> Option<(Vec<Fcsup>, Haproxy)> {
    if !privileged() {
        return None;
    }
    assert!(std::path::Path::new(HAPROXY).exists(), "HAProxy 2.6 is not installed at {HAPROXY} (apt-get install haproxy)");
    let yaml = format!("edition: 3.0.0\nresources:\n{resources}");
    let fleet: Vec<Fcsup> = (0..nodes)
        .map(|i| {
            let name = format!("n{i}");
            let mut a = vec!["--node-name", &name];
            a.extend_from_slice(args);
            Fcsup::serve_file(&yaml, &a)
        })
        .collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut gen = Command::new(env!("CARGO_BIN_EXE_fcsup"));
    gen.args(["haproxy-config", "--listen", &listen, "--check-inter", "100"]);
    for (i, f) in fleet.iter().enumerate() {
        gen.arg("--node").arg(format!("n{i}={}", f.addr));
    }
    let out = gen.output().unwrap();
    assert!(out.status.success(), "haproxy-config failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, &out.stdout).unwrap();
    let check = Command::new(HAPROXY).arg("-c").arg("-f").arg(&cfg).output().unwrap();
    assert!(check.status.success(), "haproxy -c refused the configuration: {}", String::from_utf8_lossy(&check.stderr));
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let child =
        Command::new(HAPROXY).arg("-db").arg("-f").arg(&cfg).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let h = Haproxy { child, addr: listen, dir };
    wait_for("HAProxy answers /healthz", Duration::from_secs(20), || (try_get(&h.addr, "/healthz").map(|r| r.status) == Some(200)).then_some(()));
    Some((fleet, h))
}

/// One request with `Connection: close`; `None` when the connection fails (counted as a loss).
fn try_http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    (!raw.is_empty()).then(|| parse_response(&raw))
}

fn try_get(addr: &str, path: &str) -> Option<Resp> {
    try_http(addr, "GET", path, b"")
}

fn invoke(addr: &str, name: &str, body: &str) -> Resp {
    try_http(addr, "POST", &format!("/2023-03-30/functions/{name}/invocations"), body.as_bytes()).expect("an answer")
}

/// How many output lines of `f` contain `what`.
fn lines_with(f: &Fcsup, what: &str) -> usize {
    f.output().iter().filter(|l| l.contains(what)).count()
}

fn functions(n: usize, extra: &str) -> String {
    (0..n).map(|i| fixture_props(&format!("f{i}"), extra)).collect()
}

#[test]
fn functions_stay_home_spill_when_full_and_get_fc_429_when_every_node_is() {
    let Some((mut fleet, front)) = cluster(3, &functions(6, "fcsup: {maxInstances: 1}"), &[]) else { return };
    // Every request of a function lands on one node, the node's name on the answer.
    let mut homes = Vec::new();
    for i in 0..6 {
        let name = format!("f{i}");
        let nodes: Vec<String> = (0..3)
            .map(|_| {
                let r = invoke(&front.addr, &name, "{}");
                assert_eq!(r.status, 200, "{}", r.text());
                r.header("x-fcsup-node").to_string()
            })
            .collect();
        assert!(nodes[0].starts_with('n') && nodes.iter().all(|n| *n == nodes[0]), "{name} moved: {nodes:?}");
        homes.push(nodes[0].clone());
    }
    assert!(homes.iter().any(|h| *h != homes[0]), "six functions, one node: {homes:?}");

    // A large body (more than HAProxy's 16 KB buffer: not retryable) arrives whole.
    let pad = "x".repeat(200 * 1024);
    let body = format!(r#"{{"pad":"{pad}","op":"headers"}}"#);
    let r = invoke(&front.addr, "f1", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["content-length"], body.len().to_string());

    // f0 is held on its home: the next request spills to another node; held there too, the
    // next reaches the third node (HAProxy avoids only the server it just tried: the bounded
    // load has to walk the ring further).
    let home = fleet.iter().position(|f| f.node_name() == homes[0]).unwrap();
    let hold = r#"{"op":"sleep","ms":9000}"#;
    let mut holding: Vec<usize> = Vec::new();
    let mut held = Vec::new();
    for k in 0..fleet.len() {
        let addr = front.addr.clone();
        held.push(std::thread::spawn(move || invoke(&addr, "f0", hold)));
        let at = wait_for("the hold to run on a node not yet holding one", Duration::from_secs(20), || {
            (0..fleet.len()).find(|i| !holding.contains(i) && lines_with(&fleet[*i], "op=sleep") == 1)
        });
        holding.push(at);
        if k == 0 {
            assert_eq!(at, home, "the first request did not go home");
            let r = invoke(&front.addr, "f0", "{}");
            assert_eq!(r.status, 200, "{}", r.text());
            assert_ne!(r.header("x-fcsup-node"), homes[0], "did not spill");
        }
    }
    // Every node holds f0's one instance: FC's 429, at once.
    let r = invoke(&front.addr, "f0", "{}");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["Code"], "ResourceExhausted");
    assert_eq!(r.header("x-fcsup-full"), "1");
    // Straight to a node: without HAProxy's header a full function is FC's 429; with it, 425.
    let path = "/2023-03-30/functions/f0/invocations";
    let r = http_tcp(&fleet[home].addr, "POST", path, &[], b"{}");
    assert_eq!((r.status, r.header("x-fcsup-full")), (429, ""), "{}", r.text());
    let r = http_tcp(&fleet[home].addr, "POST", path, &[("X-Fcsup-Front", "haproxy")], b"{}");
    assert_eq!((r.status, r.header("x-fcsup-full"), r.header("x-fcsup-node")), (425, "1", homes[0].as_str()), "{}", r.text());
    assert_eq!(r.json()["Code"], "ResourceExhausted");
    for t in held {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for f in &mut fleet {
        f.stop_and_check_clean();
    }
    drop(front);
}

#[test]
fn a_draining_node_fails_its_check_and_a_request_loop_loses_nothing() {
    let Some((mut fleet, front)) = cluster(2, &functions(8, ""), &["--drain-seconds", "3"]) else { return };
    let h = try_get(&fleet[0].addr, "/healthz").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!((h.json()["node"].as_str(), h.json()["draining"].as_bool()), (Some("n0"), Some(false)));
    assert_eq!(h.json()["source"]["state"], "local");

    // A steady loop through HAProxy, one request after another, over every function.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let lost = Arc::new(Mutex::new(Vec::new()));
    let looper = {
        let (stop, seen, lost, addr) = (stop.clone(), seen.clone(), lost.clone(), front.addr.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("/2023-03-30/functions/f{}/invocations", i % 8);
                match try_http(&addr, "POST", &path, b"{}") {
                    Some(r) if r.status == 200 => seen.lock().unwrap().push((r.status, r.header("x-fcsup-node").to_string())),
                    Some(r) => lost.lock().unwrap().push(format!("{path}: {} {}", r.status, r.text())),
                    None => lost.lock().unwrap().push(format!("{path}: no answer")),
                }
                i += 1;
            }
        })
    };
    let served_by = |node: &str| seen.lock().unwrap().iter().filter(|(_, n)| n == node).count();
    wait_for("n0 to serve some of the loop", Duration::from_secs(30), || (served_by("n0") >= 5).then_some(()));

    // SIGTERM: n0 fails its health check at once and keeps serving for the drain.
    let pid = fleet[0].pid();
    // SAFETY: kill(2) takes no pointers; the pid is this test's child.
    unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGTERM) };
    let h = wait_for("n0's /healthz to fail", Duration::from_secs(10), || try_get(&fleet[0].addr, "/healthz").filter(|r| r.status == 503));
    assert_eq!((h.json()["node"].as_str(), h.json()["draining"].as_bool()), (Some("n0"), Some(true)));
    // Its process ends on its own (a second signal would cut the drain short).
    wait_for("n0 to exit after its drain", Duration::from_secs(30), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))).then_some(())
    });
    let after = seen.lock().unwrap().len();
    wait_for("the loop to go on on n1", Duration::from_secs(30), || (seen.lock().unwrap().len() >= after + 20).then_some(()));
    stop.store(true, Ordering::SeqCst);
    looper.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[seen.len() - 10..].iter().all(|(_, n)| n == "n1"), "a stopped node answered");
    assert_eq!(*lost.lock().unwrap(), Vec::<String>::new(), "requests lost of {}; HAProxy:\n{}", seen.len(), front.log());
    let out = fleet[0].stop();
    assert!(out.iter().any(|l| l.contains("draining")), "{}", out.join("\n"));
    fleet[1].stop_and_check_clean();
    drop(front);
}

/// A function that answers 425 itself (RFC 8470 "Too Early") through an HTTP trigger.
const EARLY_PY: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print("ran-once", flush=True)
        b = b'{"too": "early"}'
        self.send_response(425)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

#[test]
fn a_functions_own_425_is_answered_not_run_again_on_every_node() {
    use std::os::unix::fs::PermissionsExt;
    let code = tempfile::tempdir().unwrap();
    std::fs::set_permissions(code.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(code.path().join("server.py"), EARLY_PY).unwrap();
    std::fs::set_permissions(code.path().join("server.py"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let resources = format!(
        "  early:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 128\n      timeout: 10\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n      triggers:\n        - triggerName: t\n          triggerType: http\n          triggerConfig: {{authType: anonymous, methods: [POST]}}\n",
        code.path().display()
    );
    let Some((mut fleet, front)) = cluster(3, &resources, &[]) else { return };
    let r = try_http(&front.addr, "POST", "/http/early/once", b"{}").expect("an answer");
    assert_eq!(r.status, 425, "the function's own status reaches the client: {}", r.text());
    assert_eq!(r.header("x-fcsup-status"), "", "the marker stays between the node and HAProxy");
    let ran: usize = fleet.iter().map(|f| f.log_file("early").matches("ran-once").count()).sum();
    assert_eq!(ran, 1, "a function that answered 425 was run again on other nodes; HAProxy:\n{}", front.log());
    for f in &mut fleet {
        f.stop_and_check_clean();
    }
    drop(front);
}

/// The node name a test's fcsup was started with.
trait NodeName {
    fn node_name(&self) -> String;
}

impl NodeName for Fcsup {
    fn node_name(&self) -> String {
        let h = try_get(&self.addr, "/healthz").expect("healthz");
        h.json()["node"].as_str().unwrap().to_string()
    }
}
