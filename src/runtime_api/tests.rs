//! The server against a scripted agent over real loopback HTTP: the protocol, and every way
//! an agent (or a caller) can misbehave.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

async fn server(limits: Limits) -> (RuntimeApi, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let info = InstanceInfo {
        function_name: "f".into(),
        handler: "index.handler".into(),
        memory_mb: 128,
        timeout_s: 3,
        region: "cn-test".into(),
        account_id: "42".into(),
        ..Default::default()
    };
    (RuntimeApi::serve_with(l, info, limits), addr)
}

/// One request on its own connection.
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (StatusCode, HeaderMap, Bytes) {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", "rt");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx.send_request(b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

async fn next(addr: SocketAddr) -> (StatusCode, HeaderMap, Bytes) {
    tokio::time::timeout(WAIT, send(addr, "GET", "/2020-11-11/runtime/invocation/next", &[], b"")).await.expect("next answered")
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (StatusCode, Bytes) {
    let (s, _, b) = send(addr, "POST", path, &[("content-type", "application/json")], body).await;
    (s, b)
}

fn deadline() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3)
}

fn error_code(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["errorCode"].as_str().unwrap().to_string()
}

/// Waits until the server holds a queued (not yet taken) call.
async fn until_queued(api: &RuntimeApi) {
    tokio::time::timeout(WAIT, async {
        while api.shared.lock().queued.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("call queued");
}

#[tokio::test]
async fn invoke_round_trip_carries_fc_headers() {
    let (api, addr) = server(Limits::default()).await;
    let mut call =
        Call::new(CallKind::Invoke, "1-abc-def", SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123), Bytes::from_static(b"event"));
    call.credentials = Some(Credentials { access_key_id: "ak".into(), access_key_secret: "sk".into(), security_token: "tok".into() });
    call.retry_count = 2;
    let agent = tokio::spawn(async move {
        let (s, h, body) = next(addr).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(&body[..], b"event");
        let get = |k: &str| h.get(k).unwrap().to_str().unwrap().to_string();
        assert_eq!(get("x-fc-request-id"), "1-abc-def");
        assert_eq!(get("x-fc-function-type"), "0");
        assert_eq!(get("x-fc-function-deadline"), "1700000000123");
        assert_eq!(get("x-fc-function-timeout"), "3");
        assert_eq!(get("x-fc-function-memory"), "128");
        assert_eq!(get("x-fc-function-handler"), "index.handler");
        assert_eq!(get("x-fc-region"), "cn-test");
        assert_eq!(get("x-fc-account-id"), "42");
        assert_eq!(get("x-fc-access-key-id"), "ak");
        assert_eq!(get("x-fc-security-token"), "tok");
        assert_eq!(get("x-fc-retry-count"), "2");
        assert!(h.get("x-fc-http-params").is_none());
        post(addr, "/2020-11-11/runtime/invocation/1-abc-def/response", b"\"result\"").await
    });
    let reply = tokio::time::timeout(WAIT, api.call(call)).await.unwrap().unwrap();
    let Reply::Success(s) = reply else { panic!("{reply:?}") };
    assert_eq!(&s.body[..], b"\"result\"");
    assert_eq!(s.content_type.as_deref(), Some("application/json"));
    assert_eq!(agent.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn hooks_are_told_apart_by_function_type() {
    let (api, addr) = server(Limits::default()).await;
    for (kind, want) in [(CallKind::Initialize, "1"), (CallKind::PreStop, "2"), (CallKind::PreFreeze, "3")] {
        let agent = tokio::spawn(async move {
            let (_, h, body) = next(addr).await;
            assert!(body.is_empty());
            let id = h["x-fc-request-id"].to_str().unwrap().to_string();
            post(addr, &format!("/2020-11-11/runtime/invocation/{id}/response"), b"").await;
            h["x-fc-function-type"].to_str().unwrap().to_string()
        });
        let r = api.call(Call::new(kind, format!("hook-{want}"), deadline(), Bytes::new())).await.unwrap();
        assert!(matches!(r, Reply::Success(_)));
        assert_eq!(agent.await.unwrap(), want);
    }
}

#[tokio::test]
async fn error_answers_keep_fc_error_body() {
    let (api, addr) = server(Limits::default()).await;
    let body = br#"{"errorMessage":"oops","errorType":"Error","stackTrace":["Error: oops"]}"#;
    let agent = tokio::spawn(async move {
        next(addr).await;
        send(addr, "POST", "/2020-11-11/runtime/invocation/r1/error", &[("x-fc-error-type", "HandledInvocationError")], body).await.0
    });
    let Reply::Error(e) = api.call(Call::new(CallKind::Invoke, "r1", deadline(), Bytes::new())).await.unwrap() else { panic!() };
    assert_eq!(agent.await.unwrap(), StatusCode::OK);
    assert_eq!(e.error_message, "oops");
    assert_eq!(e.error_type.as_deref(), Some("Error"));
    assert_eq!(&e.body[..], &body[..]);
    assert_eq!(e.fc_error_type(), "HandledInvocationError");
    // A body that is not FC's shape is still a failure, its text the message.
    let agent = tokio::spawn(async move {
        next(addr).await;
        post(addr, "/2020-11-11/runtime/invocation/r2/error", b"plain failure").await.0
    });
    let Reply::Error(e) = api.call(Call::new(CallKind::Invoke, "r2", deadline(), Bytes::new())).await.unwrap() else { panic!() };
    assert_eq!(agent.await.unwrap(), StatusCode::OK);
    assert_eq!((e.error_message.as_str(), e.error_type.as_deref(), e.fc_error_type()), ("plain failure", None, "UnhandledInvocationError"));
}

#[tokio::test]
async fn one_call_at_a_time() {
    let (api, addr) = server(Limits::default()).await;
    let api = std::sync::Arc::new(api);
    let first = tokio::spawn({
        let api = api.clone();
        async move { api.call(Call::new(CallKind::Invoke, "one", deadline(), Bytes::new())).await }
    });
    until_queued(&api).await;
    let busy = api.call(Call::new(CallKind::Invoke, "two", deadline(), Bytes::new())).await.unwrap_err();
    assert!(matches!(&busy, CallError::Busy(id) if id == "one"), "{busy}");
    // Still busy while the agent works on it.
    assert_eq!(next(addr).await.0, StatusCode::OK);
    assert!(matches!(api.call(Call::new(CallKind::Invoke, "two", deadline(), Bytes::new())).await, Err(CallError::Busy(_))));
    assert_eq!(post(addr, "/2020-11-11/runtime/invocation/one/response", b"1").await.0, StatusCode::OK);
    first.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_newer_poll_supersedes_an_older_one() {
    let (api, addr) = server(Limits::default()).await;
    let old = tokio::spawn(next(addr));
    // Let the first poll register before the second arrives.
    tokio::time::timeout(WAIT, async {
        while api.shared.lock().poll_gen == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap();
    let new = tokio::spawn(next(addr));
    let (s, _, b) = old.await.unwrap();
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::CONFLICT, "PollSuperseded"));
    let call = tokio::spawn(async move { api.call(Call::new(CallKind::Invoke, "x", deadline(), Bytes::from_static(b"e"))).await });
    let (s, h, _) = new.await.unwrap();
    assert_eq!((s, h["x-fc-request-id"].to_str().unwrap()), (StatusCode::OK, "x"));
    post(addr, "/2020-11-11/runtime/invocation/x/response", b"").await;
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_that_disconnects_mid_poll_loses_nothing() {
    let (api, addr) = server(Limits::default()).await;
    let gone = tokio::spawn(next(addr));
    tokio::time::sleep(Duration::from_millis(20)).await;
    gone.abort();
    let _ = gone.await;
    let api = std::sync::Arc::new(api);
    let call = tokio::spawn({
        let api = api.clone();
        async move { api.call(Call::new(CallKind::Invoke, "after", deadline(), Bytes::new())).await }
    });
    until_queued(&api).await;
    let (s, h, _) = next(addr).await;
    assert_eq!((s, h["x-fc-request-id"].to_str().unwrap()), (StatusCode::OK, "after"));
    post(addr, "/2020-11-11/runtime/invocation/after/response", b"").await;
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_answers_get_clear_errors() {
    let (api, addr) = server(Limits::default()).await;
    let base = "/2020-11-11/runtime/invocation";
    // Unknown id, malformed ids, wrong method, unknown paths.
    let (s, b) = post(addr, &format!("{base}/nobody/response"), b"").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::NOT_FOUND, "InvocationNotFound"));
    for bad in ["a%20b", "a..b/c", &"x".repeat(129)] {
        let (s, _b) = post(addr, &format!("{base}/{bad}/response"), b"").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (s, b) = post(addr, &format!("{base}/a%20b/error"), b"").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::BAD_REQUEST, "InvalidRequestId"));
    let (s, _, b) = send(addr, "POST", &format!("{base}/next"), &[], b"").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    let (s, _, b) = send(addr, "GET", "/2018-06-01/runtime/invocation/next", &[], b"").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::NOT_FOUND, "PathNotFound"));
    // An answer before the call was taken, then twice.
    let api = std::sync::Arc::new(api);
    let call = tokio::spawn({
        let api = api.clone();
        async move { api.call(Call::new(CallKind::Invoke, "r", deadline(), Bytes::new())).await }
    });
    until_queued(&api).await;
    let (s, b) = post(addr, &format!("{base}/r/response"), b"early").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::CONFLICT, "InvocationNotTaken"));
    next(addr).await;
    assert_eq!(post(addr, &format!("{base}/r/response"), b"first").await.0, StatusCode::OK);
    let (s, b) = post(addr, &format!("{base}/r/error"), b"second").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::CONFLICT, "InvocationAlreadyAnswered"));
    let Reply::Success(r) = call.await.unwrap().unwrap() else { panic!() };
    assert_eq!(&r.body[..], b"first");
    // The caller's own mistakes.
    let e = api.call(Call::new(CallKind::Invoke, "has space", deadline(), Bytes::new())).await.unwrap_err();
    assert!(matches!(e, CallError::InvalidRequestId(_)), "{e}");
    let mut c = Call::new(CallKind::Invoke, "ok", deadline(), Bytes::new());
    c.client_ip = Some("bad\nvalue".into());
    assert!(matches!(api.call(c).await, Err(CallError::InvalidHeader { name: "x-fc-client-ip", .. })));
}

#[tokio::test]
async fn oversized_answer_fails_the_call_at_once() {
    let (api, addr) = server(Limits { max_response_bytes: 16 }).await;
    let agent = tokio::spawn(async move {
        next(addr).await;
        let (s, b) = post(addr, "/2020-11-11/runtime/invocation/big/response", &[b'x'; 17]).await;
        (s, error_code(&b))
    });
    let e = tokio::time::timeout(WAIT, api.call(Call::new(CallKind::Invoke, "big", deadline(), Bytes::new()))).await.unwrap().unwrap_err();
    assert!(matches!(e, CallError::ResponseTooLarge { limit: 16 }), "{e}");
    assert_eq!(agent.await.unwrap(), (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge".to_string()));
    // Exactly the limit is fine, and the server took the next call.
    let agent = tokio::spawn(async move {
        next(addr).await;
        post(addr, "/2020-11-11/runtime/invocation/fits/response", &[b'x'; 16]).await.0
    });
    api.call(Call::new(CallKind::Invoke, "fits", deadline(), Bytes::new())).await.unwrap();
    assert_eq!(agent.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_withdrawn_call_frees_the_instance() {
    let (api, addr) = server(Limits::default()).await;
    // Withdrawn while queued.
    let r = tokio::time::timeout(Duration::from_millis(50), api.call(Call::new(CallKind::Invoke, "q", deadline(), Bytes::new()))).await;
    r.unwrap_err();
    assert!(api.shared.lock().queued.is_none());
    // Withdrawn while the agent works on it: its late answer gets 410.
    let agent = tokio::spawn(async move {
        let (_, h, _) = next(addr).await;
        h["x-fc-request-id"].to_str().unwrap().to_string()
    });
    let r = tokio::time::timeout(Duration::from_millis(300), api.call(Call::new(CallKind::Invoke, "slow", deadline(), Bytes::new()))).await;
    r.unwrap_err();
    assert_eq!(agent.await.unwrap(), "slow");
    let (s, b) = post(addr, "/2020-11-11/runtime/invocation/slow/response", b"late").await;
    assert_eq!((s, error_code(&b).as_str()), (StatusCode::GONE, "InvocationCanceled"));
    // The next call goes through.
    let agent = tokio::spawn(async move {
        next(addr).await;
        post(addr, "/2020-11-11/runtime/invocation/later/response", b"ok").await.0
    });
    api.call(Call::new(CallKind::Invoke, "later", deadline(), Bytes::new())).await.unwrap();
    assert_eq!(agent.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn init_error_fails_the_call_in_flight_and_every_later_one() {
    let (api, addr) = server(Limits::default()).await;
    assert!(api.init_error().is_none());
    let api = std::sync::Arc::new(api);
    let call = tokio::spawn({
        let api = api.clone();
        async move { api.call(Call::new(CallKind::Initialize, "init-1", deadline(), Bytes::new())).await }
    });
    let waiter = tokio::spawn({
        let api = api.clone();
        async move { api.init_failed().await }
    });
    until_queued(&api).await;
    let body = br#"{"errorMessage":"No module named 'index'","errorType":"ModuleNotFoundError"}"#;
    assert_eq!(post(addr, "/2020-11-11/runtime/init/error", body).await.0, StatusCode::OK);
    let e = call.await.unwrap().unwrap_err();
    assert!(matches!(&e, CallError::Init(a) if a.error_type.as_deref() == Some("ModuleNotFoundError")), "{e}");
    assert!(e.to_string().contains("No module named 'index'"));
    assert_eq!(tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap().error_message, "No module named 'index'");
    assert!(matches!(api.call(Call::new(CallKind::Invoke, "later", deadline(), Bytes::new())).await, Err(CallError::Init(_))));
    assert_eq!(api.init_error().unwrap().error_message, "No module named 'index'");
}

#[tokio::test]
async fn unix_socket_listener_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.sock");
    let api = RuntimeApi::serve(tokio::net::UnixListener::bind(&path).unwrap(), InstanceInfo::default());
    let agent = tokio::spawn(async move {
        let io = TokioIo::new(tokio::net::UnixStream::connect(&path).await.unwrap());
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/2020-11-11/runtime/invocation/next").header("host", "rt").body(Full::new(Bytes::new())).unwrap();
        let r = tx.send_request(req).await.unwrap();
        let id = r.headers()["x-fc-request-id"].to_str().unwrap().to_string();
        r.into_body().collect().await.unwrap();
        let req = Request::post(format!("/2020-11-11/runtime/invocation/{id}/response"))
            .header("host", "rt")
            .body(Full::new(Bytes::from_static(b"unix")))
            .unwrap();
        tx.send_request(req).await.unwrap().status()
    });
    let Reply::Success(s) = api.call(Call::new(CallKind::Invoke, "u1", deadline(), Bytes::new())).await.unwrap() else { panic!() };
    assert_eq!(&s.body[..], b"unix");
    assert_eq!(agent.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn connections_are_capped() {
    let (_api, addr) = server(Limits::default()).await;
    let mut held = Vec::new();
    for _ in 0..server::MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The next connection waits in the backlog: no answer while all slots are held…
    let extra = tokio::spawn(send(addr, "GET", "/nowhere", &[], b""));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!extra.is_finished(), "a connection beyond the cap was served");
    // …and is served as soon as one closes.
    drop(held.pop());
    let (s, _, _) = tokio::time::timeout(WAIT, extra).await.unwrap().unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn polled_resolves_on_the_first_next() {
    let (api, addr) = server(Limits::default()).await;
    assert!(tokio::time::timeout(Duration::from_millis(50), api.polled()).await.is_err(), "not before the agent polls");
    let poll = tokio::spawn(next(addr));
    tokio::time::timeout(WAIT, api.polled()).await.expect("the first next makes it ready");
    tokio::time::timeout(WAIT, api.polled()).await.expect("and it stays ready");
    poll.abort();
}
