//! Privileged tests of function output under floods: a line without end keeps fcsup's memory
//! bounded, log files rotate within their bound, and printing is rate-limited with a count of
//! what was dropped. Nothing here asserts a timing.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::time::Duration;

use common::*;

/// Bound on fcsup's resident memory while a function floods it (MB); without line splitting
/// a 1 GB line took GBs.
const RSS_BOUND_MB: u64 = 200;

fn rss_mb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) / 1024
}

/// The fixture as `name` with a request timeout of `timeout` seconds.
fn flood_props(name: &str, timeout: u32) -> String {
    fixture_props(name, "").replace("timeout: 10", &format!("timeout: {timeout}"))
}

fn serve(props: &str, args: &[&str]) -> Option<Fcsup> {
    privileged().then(|| Fcsup::serve_file(&format!("edition: 3.0.0\nresources:\n{props}"), args))
}

fn flood_in_background(f: &Fcsup, name: &str, bytes: u64, line: u64) -> std::thread::JoinHandle<Resp> {
    let (addr, path) = (f.addr.clone(), format!("/2023-03-30/functions/{name}/invocations"));
    let body = format!(r#"{{"op":"flood","bytes":{bytes},"line":{line}}}"#);
    std::thread::spawn(move || http(&addr, "POST", &path, &[], body.as_bytes()))
}

fn log_files(f: &Fcsup) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(f.dir.path().join("logs"))
        .map(|d| d.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_gigabyte_without_newline_keeps_fcsup_bounded_and_it_still_serves_and_stops() {
    let props = flood_props("endless", 600) + &flood_props("brief", 3);
    let Some(mut f) = serve(&props, &["--log-max-bytes", "4M", "--log-max-files", "1", "--print-rate", "20"]) else { return };
    let pid = f.pid();
    let flood = flood_in_background(&f, "endless", 1 << 30, 0);
    let mut peak = 0;
    while !flood.is_finished() {
        peak = peak.max(rss_mb(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = flood.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-fc-error-type").is_empty(), "{}", r.text());
    peak = peak.max(rss_mb(pid));
    eprintln!("fcsup's peak RSS while 1 GB without newline went through: {peak} MB");
    assert!(peak < RSS_BOUND_MB, "fcsup's RSS reached {peak} MB while the function wrote 1 GB without a newline");
    assert!(f.log_file("endless").contains(&format!("x{}", fcsup::logs::CONTINUES)), "cut lines are marked");
    let total: u64 = log_files(&f).iter().map(|(_, n)| n).sum();
    assert!(total <= 2 * (4 << 20), "log files hold {total} bytes: {:?}", log_files(&f));

    let r = f.invoke("endless", "{}");
    assert_eq!(r.status, 200, "fcsup answers after the flood: {}", r.text());

    // Shutdown during a flood (a request that floods until its 3 s timeout: requests in flight
    // finish before shutdown) still stops everything.
    let _flood = flood_in_background(&f, "brief", 1 << 40, 0);
    wait_for("the second flood to reach the log", Duration::from_secs(60), || (f.log_file("brief").len() > 1 << 20).then_some(()));
    assert!(rss_mb(pid) < RSS_BOUND_MB);
    f.stop_and_check_clean();
}

#[test]
fn a_flood_of_lines_rotates_the_log_and_printing_is_rate_limited() {
    let (max, keep) = (1u64 << 20, 2u64);
    let Some(mut f) = serve(&flood_props("chatty", 600), &["--log-max-bytes", "1M", "--log-max-files", "2", "--print-rate", "50"]) else { return };
    let r = f.invoke_with("chatty", r#"{"op":"flood","bytes":20000000,"line":100}"#, &[("x-fc-log-type", "Tail")]);
    assert_eq!(r.status, 200, "{}", r.text());
    use base64::Engine;
    let tail = base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap();
    assert!(tail.len() <= fcsup::logs::TAIL_BYTES, "Tail is {} bytes", tail.len());

    let line =
        f.wait_line("with the drop count", |l| l.starts_with("[chatty] ") && l.ends_with("lines dropped (rate limit)"), Duration::from_secs(30));
    let dropped: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(dropped > 0, "{line}");
    let printed = f.output().iter().filter(|l| l.starts_with("[chatty/") && l.ends_with("xxxx")).count() as u64;
    assert!(printed < 200_000, "{printed} of 200,000 lines were printed");

    let files = log_files(&f);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["chatty.log", "chatty.log.1", "chatty.log.2"], "{files:?}");
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    assert!(total <= (keep + 1) * max, "log files hold {total} bytes: {files:?}");
    f.stop_and_check_clean();
}

#[test]
fn output_flows_while_nobody_reads_fcsups_stdout() {
    if !privileged() {
        return;
    }
    // fcsup's stdout is a pipe nobody reads: once it is full, printing must not hold up the
    // function (its log file still gets every line).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.yaml"), format!("edition: 3.0.0\nresources:\n{}", flood_props("unread", 600))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = format!("fcsup-test-{}", uuid::Uuid::new_v4().simple());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["serve", "-f"])
        .arg(dir.path().join("s.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--cgroup-root", &root, "--log-max-bytes", "1G", "--log-dir"])
        .arg(dir.path().join("logs"))
        .arg("--queue-db")
        .arg(dir.path().join("async.db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_for("fcsup to listen", Duration::from_secs(60), || std::net::TcpStream::connect(&addr).ok());
    let r = http(&addr, "POST", "/2023-03-30/functions/unread/invocations", &[], br#"{"op":"flood","bytes":20000000,"line":100}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-fc-error-type").is_empty(), "the function was held up: {}", r.text());
    let log = dir.path().join("logs/unread.log");
    wait_for("every line in the log file", Duration::from_secs(60), || {
        let n = std::fs::read(&log).unwrap_or_default().split(|b| *b == b'\n').filter(|l| l.ends_with(b"xxxx")).count();
        (n >= 20_000_000 / 100).then_some(())
    });
    signal(&child, libc::SIGTERM);
    let status = wait_for("fcsup to exit", Duration::from_secs(30), || child.try_wait().unwrap());
    assert!(status.success(), "fcsup exited with {status}");
    assert!(!cgroup2_mount().join(&root).exists(), "cgroup root left behind");
}
