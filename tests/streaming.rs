//! Privileged tests of streaming through fcsup (issue 15): an answer reaches the client as the
//! function writes it (chunked, SSE), the instance stays thawed and billed while it streams,
//! a Tail log follows a streamed answer as a trailer, a WebSocket on an HTTP trigger echoes,
//! request bodies pass through, and lines printed after an answer belong to its request.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

fn props(name: &str) -> String {
    props_with_timeout(name, 10)
}

fn props_with_timeout(name: &str, timeout: u64) -> String {
    format!(
        "  {name}:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 128\n      timeout: {timeout}\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/stream").display()
    )
}

/// Sends a bodyless GET and reads the raw answer as it comes; for each of `markers`, when it
/// first arrived (from the request's start). `during` runs once, when the first marker came.
fn get_streaming(addr: &str, path: &str, headers: &str, markers: &[&str], mut during: impl FnMut()) -> (Vec<u8>, Vec<Duration>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").as_bytes()).unwrap();
    let (mut raw, mut seen, mut buf) = (Vec::new(), vec![None; markers.len()], [0u8; 65536]);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        for (i, m) in markers.iter().enumerate() {
            if seen[i].is_none() && raw.windows(m.len()).any(|w| w == m.as_bytes()) {
                seen[i] = Some(t.elapsed());
                if i == 0 {
                    during();
                }
            }
        }
    }
    let seen =
        seen.into_iter().zip(markers).map(|(d, m)| d.unwrap_or_else(|| panic!("{m:?} never came: {}", String::from_utf8_lossy(&raw)))).collect();
    (raw, seen)
}

fn cgroup_of(f: &Fcsup) -> String {
    f.instances()[0]["cgroup"].as_str().unwrap().to_string()
}

fn ledger_window(f: &Fcsup, request_id: &str) -> serde_json::Value {
    wait_for("the request's billing window", Duration::from_secs(10), || {
        let r = http(&f.addr, "GET", "/admin/ledger", &[], b"");
        r.text()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|w| w["request_ids"].as_array().unwrap().iter().any(|i| i == request_id))
    })
}

#[test]
fn a_streamed_answer_reaches_the_client_as_the_function_writes_it() {
    let Some(mut f) = serve_if_privileged(&props("st")) else { return };
    let warm = http(&f.addr, "GET", "/http/st/chunks?n=1", &[], b"");
    assert_eq!(warm.status, 200, "{}", warm.text());
    let cgroup = cgroup_of(&f);
    wait_frozen(&cgroup);
    let mut while_streaming = String::new();
    // Five chunks 0.3 s apart: the function spends 1.2 s between its first and its last.
    let (raw, at) = get_streaming(&f.addr, "/http/st/chunks?n=5&gap=0.3", "x-fc-log-type: Tail\r\nTE: trailers\r\n", &["chunk-0", "chunk-4"], || {
        while_streaming = events(&cgroup);
    });
    let gap = at[1] - at[0];
    eprintln!("first chunk after {:?}, last after {:?}: {gap:?} apart", at[0], at[1]);
    assert!(gap >= Duration::from_millis(900), "the chunks came together ({gap:?} apart): the answer was buffered");
    assert!(while_streaming.contains("frozen 0"), "the instance was frozen mid-stream: {while_streaming}");
    let r = parse_response(&raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), "chunked");
    assert_eq!(r.text(), "chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n");
    // The Tail log came after the body, as a trailer, with the request's lines.
    let text = String::from_utf8_lossy(&raw);
    let trailer = text.lines().find_map(|l| l.strip_prefix("x-fc-log-result: ")).unwrap_or_else(|| panic!("no Tail trailer: {text}"));
    let log = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(trailer.trim()).unwrap()).unwrap();
    let id = r.header("x-fc-request-id").to_string();
    assert!(log.contains(&format!("CHUNK 4 {id}")), "{log}");
    // The instance froze after the stream, and its billing window covers the whole stream.
    wait_frozen(&cgroup);
    let w = ledger_window(&f, &id);
    assert!(w["wall_us"].as_u64().unwrap() >= 1_200_000, "the window does not cover the stream: {w}");
    f.stop_and_check_clean();
}

#[test]
fn server_sent_events_pass_as_they_come() {
    let Some(mut f) = serve_if_privileged(&props("sse")) else { return };
    let (raw, at) = get_streaming(&f.addr, "/http/sse/sse?n=3", "", &["data: event 0", "data: event 2"], || {});
    assert!(at[1] - at[0] >= Duration::from_millis(300), "the events came together ({:?} apart)", at[1] - at[0]);
    let r = parse_response(&raw);
    assert_eq!(r.header("content-type"), "text/event-stream");
    assert_eq!(r.text(), "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n");
    f.stop_and_check_clean();
}

#[test]
fn a_websocket_on_an_http_trigger_echoes_and_holds_the_instance_thawed() {
    let Some(mut f) = serve_if_privileged(&props("ws")) else { return };
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!("GET /http/ws/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let cgroup = cgroup_of(&f);
    for msg in ["hello", "again"] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | u8::try_from(msg.len()).unwrap()];
        frame.extend_from_slice(&mask);
        frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        let mut back = vec![0u8; 2 + msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back[..2], &[0x81, u8::try_from(msg.len()).unwrap()]);
        assert_eq!(&back[2..], msg.as_bytes());
        std::thread::sleep(Duration::from_millis(200));
        assert!(events(&cgroup).contains("frozen 0"), "frozen while the socket is open");
    }
    s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).unwrap();
    let mut close = [0u8; 2];
    s.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 0x00]);
    drop(s);
    wait_frozen(&cgroup);
    f.stop_and_check_clean();
}

#[test]
fn request_bodies_pass_through_whole() {
    let Some(mut f) = serve_if_privileged(&props("echo")) else { return };
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = http(&f.addr, "POST", "/http/echo/echo", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == body, "the echoed body differs ({} bytes back)", r.body.len());
    f.stop_and_check_clean();
}

#[test]
fn lines_printed_after_the_answer_belong_to_their_request() {
    let Some(mut f) = serve_if_privileged(&props("after")) else { return };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = http(&f.addr, "GET", "/http/after/after", &[("x-fc-log-type", "Tail")], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("x-fc-request-id").to_string();
        let log = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(r.header("x-fc-log-result")).unwrap()).unwrap();
        assert!(log.contains(&format!("AFTER {id}")), "the line printed after the answer is not in its Tail log: {log}");
        ids.push(id);
    }
    // Without Tail too: the instance log tags each line with the request that printed it.
    for _ in 0..3 {
        let r = http(&f.addr, "GET", "/http/after/after", &[], b"");
        ids.push(r.header("x-fc-request-id").to_string());
    }
    for id in &ids {
        let line = f.wait_line(&format!("AFTER {id}"), |l| l.contains(&format!("AFTER {id}")), Duration::from_secs(10));
        assert!(line.contains(&format!("] {id} AFTER {id}")), "tagged with another request: {line}");
    }
    f.stop_and_check_clean();
}

/// Reads a chunked body's raw bytes until `needle` has come.
fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    while !raw.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the answer ended before {needle:?}: {}", String::from_utf8_lossy(raw));
        raw.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_chunked_request_body_reaches_the_function_piece_by_piece() {
    let Some(mut f) = serve_if_privileged(&props("pieces")) else { return };
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /http/pieces/pieces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    // Each piece is sent only once the function answered the one before: nothing in fcsup
    // (or the function) can be waiting for the whole body.
    let mut raw = Vec::new();
    for piece in ["one", "two", "three"] {
        s.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes()).unwrap();
        read_until(&mut s, &mut raw, &format!("got {piece}\n"));
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    s.read_to_end(&mut raw).unwrap();
    let r = parse_response(&raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "got one\ngot two\ngot three\n");
    f.stop_and_check_clean();
}

#[test]
fn a_stream_is_cut_at_the_function_timeout() {
    let Some(mut f) = serve_if_privileged(&props_with_timeout("cut", 2)) else { return };
    // 100 chunks 0.1 s apart would take 10 s; the function's timeout is 2 s.
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /http/cut/chunks?n=100&gap=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("chunk-0"), "{text}");
    assert!(!text.contains("chunk-99"), "the stream ran past the timeout: {text}");
    // Cut off, not ended: no last chunk, so the client knows the answer is incomplete.
    assert!(!text.ends_with("0\r\n\r\n"), "the cut stream looks complete: {text}");
    let id = text.lines().find_map(|l| l.strip_prefix("x-fc-request-id: ")).expect("a request id").trim().to_string();
    f.wait_line("the timeout's end line", |l| l.contains(&id) && l.contains("Function time out after 2 seconds"), Duration::from_secs(10));
    // The hung instance is replaced (one request at a time), and nothing is left behind.
    wait_for("the cut instance to go", Duration::from_secs(20), || f.instances().is_empty().then_some(()));
    f.stop_and_check_clean();
}

#[test]
fn a_client_that_stops_reading_does_not_hold_the_instance_past_the_timeout() {
    let Some(mut f) = serve_if_privileged(&props_with_timeout("flood", 2)) else { return };
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.write_all(b"GET /http/flood/flood HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The client reads nothing: the socket's buffers fill and hyper stops asking for frames.
    let line = f.wait_line("the flood to start", |l| l.contains("FLOOD "), Duration::from_secs(20));
    let id = line.rsplit(' ').next().unwrap().trim().to_string();
    f.wait_line("the timeout's end line", |l| l.contains(&id) && l.contains("Function time out after 2 seconds"), Duration::from_secs(20));
    wait_for("the flooding instance to go", Duration::from_secs(20), || f.instances().is_empty().then_some(()));
    // fcsup closed the client's connection: reading drains what was buffered, then ends.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    assert!(ended);
    f.stop_and_check_clean();
}

#[test]
fn a_client_leaving_mid_stream_ends_the_request() {
    let Some(mut f) = serve_if_privileged(&props("leave")) else { return };
    let mut s = TcpStream::connect(&f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /http/leave/chunks?n=100&gap=0.1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, "chunk-1\n");
    let head = String::from_utf8_lossy(&raw).into_owned();
    let header = |k: &str| head.lines().find_map(|l| l.strip_prefix(k)).expect(k).trim().to_string();
    let (id, instance) = (header("x-fc-request-id: "), header("x-fc-instance-id: "));
    drop(s);
    // FC's 499: the request ends there (its window closes), and an instance serving one
    // request at a time is replaced (a fresh one starts) rather than left mid-answer.
    f.wait_line("the cancel line", |l| l.contains(&id) && l.contains("Invocation canceled by client"), Duration::from_secs(10));
    wait_for("the instance to go", Duration::from_secs(20), || f.instances().iter().all(|i| i["id"] != instance.as_str()).then_some(()));
    let w = ledger_window(&f, &id);
    assert!(w["wall_us"].as_u64().unwrap() < 9_000_000, "the window ran on as if the whole stream had been sent: {w}");
    f.stop_and_check_clean();
}
