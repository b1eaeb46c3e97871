//! Privileged tests of the front door's security: `/admin/` only on the root-only admin socket
//! (or with the admin token), idle connections that cannot take fcsup down, FC's size limits,
//! and a failed bind that leaves nothing behind.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A raw request: `head` (request line and headers, without the blank line), then `body`
/// (write errors ignored: the server may answer and close before reading it all).
fn raw(addr: &str, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(!out.is_empty(), "no response: {r:?}");
    parse_response(&out)
}

/// A chunked body of `n` bytes, in 64 KiB chunks, with its end.
fn chunked(n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n + n / 8 + 16);
    let mut left = n;
    while left > 0 {
        let c = left.min(64 * 1024);
        b.extend_from_slice(format!("{c:x}\r\n").as_bytes());
        b.resize(b.len() + c, b'a');
        b.extend_from_slice(b"\r\n");
        left -= c;
    }
    b.extend_from_slice(b"0\r\n\r\n");
    b
}

fn invoke_path(name: &str) -> String {
    format!("/2023-03-30/functions/{name}/invocations")
}

#[test]
fn admin_is_on_the_root_only_socket_not_on_tcp() {
    let Some(mut f) = serve_if_privileged(&fixture_props("fn1", "")) else { return };
    // Over TCP every /admin/ route is refused, and the PUT did not create the function.
    let props = "code: /root\ncustomRuntimeConfig:\n  command: [/bin/sh, -c, 'id > /tmp/pwned']\n";
    let r = http_tcp(&f.addr, "PUT", "/admin/functions/evil", &[], props.as_bytes());
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["Code"], "PathNotSupported");
    let r = f.invoke("evil", "{}");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["Code"], "FunctionNotFound");
    for path in ["/admin/instances", "/admin/ledger", "/admin/async/x"] {
        assert_eq!(http_tcp(&f.addr, "GET", path, &[], b"").status, 404, "{path}");
    }
    assert_eq!(http_tcp(&f.addr, "POST", "/admin/functions/fn1/reclaim", &[], b"").status, 404);
    // Invocations and /metrics stay on TCP.
    let id = {
        let r = f.invoke("fn1", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-fc-instance-id").to_string()
    };
    assert_eq!(http_tcp(&f.addr, "GET", "/metrics", &[], b"").status, 200);

    // The socket: 0600 in a 0700 directory.
    let sock_mode = std::fs::metadata(&f.admin_socket).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(f.admin_socket.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!((sock_mode, dir_mode), (0o600, 0o700));
    // An unprivileged user cannot connect to it.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('CONNECTED')"])
        .arg(&f.admin_socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stdout.contains("CONNECTED"), "uid 65534 connected: {stdout} {stderr}");
    assert!(stderr.contains("PermissionError"), "{stderr}");

    // Root reaches it: the harness, and `fcsup ps` (socket derived from --cgroup-root).
    assert!(f.instances().iter().any(|i| i["id"] == id.as_str()));
    let ps = Command::new(env!("CARGO_BIN_EXE_fcsup")).args(["ps", "--cgroup-root", &f.cgroup_root]).output().unwrap();
    assert!(ps.status.success(), "{}", String::from_utf8_lossy(&ps.stderr));
    assert!(String::from_utf8_lossy(&ps.stdout).contains(&id), "{}", String::from_utf8_lossy(&ps.stdout));
    let report = Command::new(env!("CARGO_BIN_EXE_fcsup")).args(["report", "--json", "--admin-socket"]).arg(&f.admin_socket).output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert!(String::from_utf8_lossy(&report.stdout).contains("fn1"));
    f.stop_and_check_clean();
}

#[test]
fn admin_over_tcp_needs_the_token() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A world-readable token file is refused at start, leaving nothing behind.
    let root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("fn1", ""));
    let err = serve_failing(&yaml, &["--admin-token-file", token.to_str().unwrap(), "--cgroup-root", &root]);
    assert!(err.contains("world-readable"), "{err}");
    assert!(!cgroup2_mount().join(&root).exists());

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut f = Fcsup::serve_file(&yaml, &["--admin-token-file", token.to_str().unwrap()]);
    let props = fixture_props("fn2", "");
    let props: String = props.lines().skip(3).map(|l| format!("{}\n", l.trim_start_matches("      "))).collect();
    for auth in [None, Some("Bearer wrong"), Some("Basic s3cret-token"), Some("s3cret-token"), Some("Bearer s3cret-toke")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = http_tcp(&f.addr, "PUT", "/admin/functions/fn2", &headers, props.as_bytes());
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.json()["Code"], "Unauthorized");
        assert!(!r.header("x-fc-request-id").is_empty());
    }
    assert_eq!(f.invoke("fn2", "{}").status, 404, "a refused PUT created the function");
    let ok = [("Authorization", "Bearer s3cret-token")];
    let r = http_tcp(&f.addr, "PUT", "/admin/functions/fn2", &ok, props.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(f.invoke("fn2", "{}").status, 200);
    let r = http_tcp(&f.addr, "GET", "/admin/instances", &ok, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().as_array().unwrap().iter().any(|i| i["function"] == "fn2"));
    f.stop_and_check_clean();
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn thousands_of_idle_connections_do_not_take_it_down() {
    let Some(mut f) = serve_if_privileged(&fixture_props("fn1", "")) else { return };
    assert!(raise_nofile() > 5_200, "this test needs an open-file hard limit above 5,200");
    let idle: Vec<TcpStream> = (0..5_000).map(|_| TcpStream::connect(&f.addr).unwrap()).collect();
    let r = f.invoke("fn1", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = http(&f.addr, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    assert!(m.text().contains("fcsup_invocations_total"));
    drop(idle);
    f.stop_and_check_clean();
}

#[test]
fn idle_and_slow_connections_are_closed() {
    if !privileged() {
        return;
    }
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("fn1", ""));
    let mut f = Fcsup::serve_file(&yaml, &["--idle-timeout", "1", "--header-read-timeout", "1"]);
    let closed = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).map(|_| out)
    };
    // Nothing sent at all.
    let s = TcpStream::connect(&f.addr).unwrap();
    assert!(closed(s).is_ok(), "a silent connection stayed open");
    // Half a head.
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed(s).is_ok(), "a connection with half a head stayed open");
    // Idle after a request on a kept-alive connection.
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let out = closed(s).expect("an idle kept-alive connection stayed open");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    // A body that stops coming is refused in FC's shape.
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.write_all(format!("POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", invoke_path("fn1")).as_bytes()).unwrap();
    let out = closed(s).expect("a stalled body kept the connection");
    let r = parse_response(&out);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["Code"], "InvalidArgument");
    assert_eq!(f.invoke("fn1", "{}").status, 200);
    f.stop_and_check_clean();
}

#[test]
fn fc_size_limits_answer_invalid_argument() {
    let Some(mut f) = serve_if_privileged(&fixture_props("fn1", "")) else { return };
    let post = |extra: &str| format!("POST {} HTTP/1.1\r\nHost: x{extra}", invoke_path("fn1"));
    let check = |r: Resp, what: &str| {
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.json()["Code"], "InvalidArgument", "{what}");
        assert!(!r.header("x-fc-request-id").is_empty(), "{what}");
    };
    let sync_limit = 32 * 1024 * 1024;
    let async_limit = 128 * 1024;
    // Declared too large: refused before a byte of the body is read.
    check(raw(&f.addr, &post(&format!("\r\nContent-Length: {}", sync_limit + 1)), b""), "sync, Content-Length");
    let a = "\r\nx-fc-invocation-type: Async";
    check(raw(&f.addr, &post(&format!("{a}\r\nContent-Length: {}", async_limit + 1)), b""), "async, Content-Length");
    // Chunked: refused while streaming, once past the limit.
    check(raw(&f.addr, &post("\r\nTransfer-Encoding: chunked"), &chunked(sync_limit + 1)), "sync, chunked");
    check(raw(&f.addr, &post(&format!("{a}\r\nTransfer-Encoding: chunked")), &chunked(async_limit + 1)), "async, chunked");
    // At the limits they are taken.
    let r = raw(&f.addr, &post(&format!("{a}\r\nTransfer-Encoding: chunked")), &chunked(async_limit));
    assert_eq!(r.status, 202, "{}", r.text());
    // Headers over 8 KB, path and query over 4 KB.
    let big = "h".repeat(8 * 1024);
    check(f.invoke_with("fn1", "{}", &[("x-big", &big)]), "headers");
    check(http(&f.addr, "GET", &format!("/http/fn1/?q={}", "q".repeat(4 * 1024)), &[], b""), "path and query");
    // Function names are percent-decoded once.
    let r = http(&f.addr, "POST", &invoke_path("fn%31"), &[], b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(&f.addr, "POST", &invoke_path("fn%2531"), &[], b"{}");
    assert_eq!(r.status, 404, "{}", r.text());
    f.stop_and_check_clean();
}

#[test]
fn many_large_bodies_at_once_hit_the_memory_budget_not_the_host() {
    if !privileged() {
        return;
    }
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("fn1", ""));
    let mut f = Fcsup::serve_file(&yaml, &["--max-body-memory", "8", "--idle-timeout", "2"]);
    // Hold one body open (declared 7 MiB, 6 MiB sent, then a byte now and then so it does not
    // stall), then ask for 4 MiB more.
    let mut held = TcpStream::connect(&f.addr).unwrap();
    let n = 7 * 1024 * 1024;
    held.write_all(format!("POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", invoke_path("fn1")).as_bytes()).unwrap();
    held.write_all(&vec![b'a'; 6 * 1024 * 1024]).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (mut s, done) = (held.try_clone().unwrap(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) && s.write_all(b"a").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // (Asked again until the held body has taken its share: fcsup reads it concurrently.)
    let head = format!("POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}", invoke_path("fn1"), 4 << 20);
    let r = wait_for("a 429 while 7 MiB are held", Duration::from_secs(10), || {
        let r = raw(&f.addr, &head, b"");
        (r.status == 429).then_some(r)
    });
    assert_eq!(r.json()["Code"], "ResourceExhausted");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    trickle.join().unwrap();
    held.shutdown(std::net::Shutdown::Both).unwrap();
    drop(held);
    // The budget comes back when the request ends.
    let r = wait_for("the budget back", Duration::from_secs(10), || {
        let mut body = vec![b' '; 4 << 20];
        body[0] = b'{';
        body[(4 << 20) - 1] = b'}';
        let r = http(&f.addr, "POST", &invoke_path("fn1"), &[], &body);
        (r.status != 429).then_some(r)
    });
    assert_eq!(r.status, 200, "{}", r.text());
    f.stop_and_check_clean();
}

#[test]
fn a_failed_bind_leaves_no_cgroup_root() {
    if !privileged() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("fn1", "fcsup: {minInstances: 1}"));
    let err = serve_failing(&yaml, &["--listen", &addr, "--cgroup-root", &root]);
    assert!(err.contains("cannot listen"), "{err}");
    assert!(!cgroup2_mount().join(&root).exists(), "cgroup root left behind");
    assert!(!std::path::Path::new("/run/fcsup").join(&root).exists(), "runtime directory left behind");
}
