//! FC's runtime API with real runtimes over loopback HTTP: fcsup's Python and Node.js agents
//! (as embedded in the binary) running the handlers in tests/functions/runtime-*, and a Go
//! function written against aliyun's fc-runtime-go-sdk API (tests/functions/go-sdk).
//! Not privileged. A missing python3/node/go skips its test with the reason, except under
//! `FCSUP_REQUIRE_PRIVILEGED=1` (CI, whose .ci/run installs them), where it fails.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fcsup::runtime_api::{agents, http_event, AgentError, Call, CallError, CallKind, Credentials, InstanceInfo, Reply, RuntimeApi, Success};
use hyper::{HeaderMap, Method, StatusCode, Version};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn functions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions")
}

/// The first of `candidates` that exists or is on PATH; else skip (or fail in CI).
fn need(what: &str, candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() && p.exists() {
            return Some(p.to_path_buf());
        }
        if let Some(found) = std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(c)).find(|p| p.is_file()) {
            return Some(found);
        }
    }
    let why = format!("{what} not found ({}); install it (.ci/run does)", candidates.join(", "));
    if std::env::var("FCSUP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("runtime test cannot run: {why} (FCSUP_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// What a runtime printed, line by line, waited on without sleeping.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    more: Notify,
}

impl Output {
    async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.more.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no output line {what} within {WAIT:?}; got:\n{}", self.lines.lock().unwrap().join("\n")))
    }
}

/// A runtime process talking to its own runtime API server.
struct Runtime {
    api: RuntimeApi,
    child: tokio::process::Child,
    out: Arc<Output>,
    _dir: tempfile::TempDir,
}

fn info() -> InstanceInfo {
    InstanceInfo {
        function_name: "rt-fn".into(),
        handler: "index.handler".into(),
        memory_mb: 256,
        timeout_s: 5,
        initializer: Some("index.initialize".into()),
        initialization_timeout_s: Some(3),
        region: "cn-hangzhou".into(),
        account_id: "1234567890".into(),
        qualifier: "LATEST".into(),
        instance_id: "c-test-1".into(),
        ..Default::default()
    }
}

impl Runtime {
    /// Starts `program args…` with the runtime API's address and `env` in its environment.
    async fn start(program: &Path, args: &[&Path], code: &Path, env: &[(&str, &str)]) -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let api = RuntimeApi::serve(l, info());
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_remove("PYTHONPATH")
            .env_remove("NODE_PATH")
            .env("FC_RUNTIME_API", addr.to_string())
            .env("FC_FUNC_CODE_PATH", code)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Output::default());
        for stream in
            [child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), child.stderr.take().map(|s| Box::new(s) as _)]
        {
            let out = out.clone();
            let mut lines = tokio::io::BufReader::new(stream.unwrap()).lines();
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    out.lines.lock().unwrap().push(l);
                    out.more.notify_waiters();
                }
            });
        }
        Runtime { api, child, out, _dir: dir }
    }

    /// A runtime running an embedded agent with `interpreter`.
    async fn agent(interpreter: &Path, source: &str, file: &str, code: &Path, env: &[(&str, &str)]) -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join(file);
        std::fs::write(&script, source).unwrap();
        let mut rt = Runtime::start(interpreter, &[&script], code, env).await;
        rt._dir = dir;
        rt
    }

    async fn call(&self, kind: CallKind, id: &str, body: &[u8]) -> Result<Reply, CallError> {
        let mut call = Call::new(kind, id, SystemTime::now() + Duration::from_secs(5), Bytes::copy_from_slice(body));
        call.credentials = Some(Credentials { access_key_id: "AK".into(), access_key_secret: "SK".into(), security_token: "TOKEN".into() });
        tokio::time::timeout(WAIT, self.api.call(call))
            .await
            .unwrap_or_else(|_| panic!("{id}: no answer within {WAIT:?}; output:\n{}", self.out.lines.lock().unwrap().join("\n")))
    }

    async fn ok(&self, kind: CallKind, id: &str, body: &[u8]) -> Success {
        match self.call(kind, id, body).await {
            Ok(Reply::Success(s)) => s,
            other => panic!("{id}: {other:?}; output:\n{}", self.out.lines.lock().unwrap().join("\n")),
        }
    }

    async fn failed(&self, id: &str, body: &[u8]) -> (AgentError, Value) {
        match self.call(CallKind::Invoke, id, body).await {
            Ok(Reply::Error(e)) => {
                let v = serde_json::from_slice(&e.body).unwrap();
                (e, v)
            }
            other => panic!("{id}: {other:?}"),
        }
    }

    async fn init_error(&mut self) -> AgentError {
        let e = tokio::time::timeout(WAIT, self.api.init_failed()).await.expect("init error reported");
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.expect("agent exited").unwrap();
        assert_eq!(status.code(), Some(129), "exit status after an init error");
        e
    }

    /// Asserts FC's marker lines around request `id` of `label` (Invoke, Initialize…).
    async fn markers(&self, label: &str, id: &str, error: bool) {
        self.out.wait_line("start marker", |l| l == format!("FC {label} Start RequestId: {id}")).await;
        let end = format!("FC {label} End RequestId: {id}");
        let l = self.out.wait_line("end marker", |l| l.starts_with(&end)).await;
        assert_eq!(l.contains("Error:"), error, "{l}");
    }
}

/// `<2024-01-02T03:04:05.678Z> <id> [<LEVEL>] <msg>`: FC's log line format.
fn is_log_line(l: &str, id: &str, level: &str, msg: &str) -> bool {
    let Some((ts, rest)) = l.split_once(' ') else { return false };
    // Go's `.999` layout drops trailing zeros of the milliseconds (`…:05.12Z`, `…:05Z`).
    (20..=24).contains(&ts.len())
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && rest.starts_with(&format!("{id} [{level}] "))
        && rest.ends_with(msg)
}

fn json(s: &Success) -> Value {
    serde_json::from_slice(&s.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&s.body)))
}

/// An HTTP-trigger request's event for the function, and its answer mapped back.
async fn http_round_trip(rt: &Runtime, id: &str) -> http_event::HttpResponse {
    let mut h = HeaderMap::new();
    h.insert("content-type", "text/plain".parse().unwrap());
    h.insert("user-agent", "runtime-test".parse().unwrap());
    let ctx = http_event::RequestContext {
        request_id: id,
        account_id: "1234567890",
        domain_name: "localhost",
        domain_prefix: "rt-fn",
        source_ip: "127.0.0.1",
        time_ms: 1_700_000_000_000,
    };
    let ev = http_event::event(&Method::POST, "/p/a%20th?x=1&x=2", Version::HTTP_11, &h, b"ping", &ctx);
    let s = rt.ok(CallKind::Invoke, id, &ev).await;
    http_event::response(&s.body).unwrap()
}

#[tokio::test]
async fn python_handlers_run_as_fc_runs_them() {
    let Some(python) = need("python3", &["/usr/bin/python3", "python3"]) else { return };
    let code = functions().join("runtime-python");
    let env = [("FC_FUNCTION_HANDLER", "index.handler"), ("FC_INITIALIZER_HANDLER", "index.initialize"), ("FC_PRE_STOP_HANDLER", "index.pre_stop")];
    let rt = Runtime::agent(&python, agents::PYTHON, "bootstrap.py", &code, &env).await;

    let init = rt.ok(CallKind::Initialize, "init-1", b"").await;
    assert!(init.body.is_empty());
    rt.markers("Initialize", "init-1", false).await;
    rt.out.wait_line("initializer output", |l| l == "initializer ran for init-1").await;

    // Event bytes in, result out, FC's context.
    let v = json(&rt.ok(CallKind::Invoke, "inv-1", b"hello event").await);
    assert_eq!(v["event_type"], "bytes");
    assert_eq!(v["event"], "hello event");
    assert_eq!(v["request_id"], "inv-1");
    assert_eq!(
        v["function"],
        serde_json::json!({"name": "rt-fn", "handler": "index.handler", "memory": 256, "timeout": 5, "initializer": "index.initialize"})
    );
    assert_eq!(v["credentials"], serde_json::json!(["AK", "SK", "TOKEN"]));
    assert_eq!((v["region"].as_str(), v["account_id"].as_str()), (Some("cn-hangzhou"), Some("1234567890")));
    assert_eq!(v["initialized"], serde_json::json!(["init-1"]));
    assert_eq!(v["remaining_ok"], true);
    assert_eq!(Path::new(v["cwd"].as_str().unwrap()), code);
    let code_s = code.to_str().unwrap();
    assert_eq!(v["sys_path"], serde_json::json!([code_s, format!("{code_s}/python"), "/opt/python"]));
    rt.markers("Invoke", "inv-1", false).await;

    let raw = rt.ok(CallKind::Invoke, "inv-bytes", br#"{"cmd":"bytes"}"#).await;
    assert_eq!(&raw.body[..], b"\x00\x01raw");

    // context.getLogger() and the logging module write FC's line with the request id.
    let logged = rt.ok(CallKind::Invoke, "inv-log", br#"{"cmd":"log"}"#).await;
    assert_eq!(&logged.body[..], b"logged");
    rt.out.wait_line("logger line", |l| is_log_line(l, "inv-log", "INFO", "hello from the logger")).await;
    rt.out.wait_line("root logger line", |l| is_log_line(l, "inv-log", "WARNING", "root logger warning")).await;
    rt.out.wait_line("print output", |l| l == "plain print").await;

    // An exception is FC's error body.
    let (e, v) = rt.failed("inv-err", br#"{"cmd":"raise","why":"x"}"#).await;
    assert_eq!(
        (e.error_message.as_str(), e.error_type.as_deref(), e.fc_error_type()),
        ("bad input: x", Some("ValueError"), "UnhandledInvocationError")
    );
    let frames = v["stackTrace"].as_array().unwrap();
    let last = frames.last().unwrap();
    assert_eq!(last[0], format!("File \"{code_s}/index.py\""));
    assert_eq!(last[2], "in handler");
    assert!(last[3].as_str().unwrap().contains("raise ValueError"), "{last}");
    assert!(!v.to_string().contains("bootstrap.py"), "agent frames are hidden: {v}");
    rt.markers("Invoke", "inv-err", true).await;

    // HTTP trigger: FC 3.0's event in, {statusCode, headers, body} out.
    let r = http_round_trip(&rt, "inv-http").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["x-raw-path"], "/p/a%20th");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"method": "POST", "path": "/p/a th", "query": {"x": "1,2"}, "body": "ping", "isBase64Encoded": false, "contentType": "text/plain"})
    );

    rt.ok(CallKind::PreStop, "stop-1", b"").await;
    rt.markers("PreStop", "stop-1", false).await;
    rt.out.wait_line("preStop output", |l| l == "pre_stop ran for stop-1").await;
}

#[tokio::test]
async fn python_import_error_is_an_init_error() {
    let Some(python) = need("python3", &["/usr/bin/python3", "python3"]) else { return };
    let mut rt = Runtime::agent(&python, agents::PYTHON, "bootstrap.py", &functions().join("runtime-python-broken"), &[]).await;
    let e = rt.init_error().await;
    assert_eq!(e.error_type.as_deref(), Some("ModuleNotFoundError"));
    assert!(e.error_message.contains("a_module_that_does_not_exist"), "{}", e.error_message);
    assert!(matches!(rt.call(CallKind::Initialize, "init-x", b"").await, Err(CallError::Init(_))));
}

#[tokio::test]
async fn node_handlers_run_as_fc_runs_them() {
    let Some(node) = need("node", &["node", "nodejs"]) else { return };
    let code = functions().join("runtime-node");
    let env = [("FC_FUNCTION_HANDLER", "index.handler"), ("FC_INITIALIZER_HANDLER", "index.initialize"), ("FC_PRE_STOP_HANDLER", "index.preStop")];
    let rt = Runtime::agent(&node, agents::NODE, "bootstrap.js", &code, &env).await;

    rt.ok(CallKind::Initialize, "init-n", b"").await;
    rt.markers("Initialize", "init-n", false).await;
    rt.out.wait_line("initializer output", |l| is_log_line(l, "init-n", "info", "initializer ran for init-n")).await;

    let v = json(&rt.ok(CallKind::Invoke, "inv-n", b"node event").await);
    assert_eq!(v["isBuffer"], true);
    assert_eq!(v["event"], "node event");
    assert_eq!(v["requestId"], "inv-n");
    assert_eq!(v["function"]["name"], "rt-fn");
    assert_eq!(v["function"]["handler"], "index.handler");
    assert_eq!(v["function"]["memory"], 256);
    assert_eq!(v["function"]["timeout"], 5);
    assert_eq!(v["function"]["initializer"], "index.initialize");
    assert_eq!(v["credentials"], serde_json::json!({"accessKeyId": "AK", "accessKeySecret": "SK", "securityToken": "TOKEN"}));
    assert_eq!((v["region"].as_str(), v["accountId"].as_str()), (Some("cn-hangzhou"), Some("1234567890")));
    assert_eq!(v["initialized"], serde_json::json!(["init-n"]));
    assert_eq!(Path::new(v["cwd"].as_str().unwrap()), code);
    assert!(v["nodePath"].as_str().unwrap().split(':').any(|p| p == "/opt/nodejs/node_modules"), "{v}");
    rt.markers("Invoke", "inv-n", false).await;

    let logged = rt.ok(CallKind::Invoke, "inv-nlog", br#"{"cmd":"log"}"#).await;
    assert_eq!(&logged.body[..], b"logged");
    rt.out.wait_line("context.logger line", |l| is_log_line(l, "inv-nlog", "info", "hello from the logger")).await;
    rt.out.wait_line("console.log line", |l| is_log_line(l, "inv-nlog", "info", "console says 42")).await;

    let (e, v) = rt.failed("inv-nerr", br#"{"cmd":"raise","why":"y"}"#).await;
    assert_eq!(
        (e.error_message.as_str(), e.error_type.as_deref(), e.fc_error_type()),
        ("bad input: y", Some("TypeError"), "UnhandledInvocationError")
    );
    assert_eq!(v["stackTrace"][0], "TypeError: bad input: y");
    assert!(v["stackTrace"][1].as_str().unwrap().contains("index.js"), "{v}");
    rt.markers("Invoke", "inv-nerr", true).await;

    // Thrown from a timer, outside the handler's promise: still this invocation's error.
    let (e, _) = rt.failed("inv-async", br#"{"cmd":"async-throw"}"#).await;
    assert_eq!((e.error_message.as_str(), e.error_type.as_deref()), ("thrown later", Some("RangeError")));

    let r = http_round_trip(&rt, "inv-nhttp").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.headers["x-raw-path"], "/p/a%20th");
    assert_eq!(&r.body[..], br#"POST /p/a th {"x":"1,2"} 70696e67"#);

    rt.ok(CallKind::PreStop, "stop-n", b"").await;
    rt.out.wait_line("preStop output", |l| is_log_line(l, "stop-n", "info", "preStop ran for stop-n")).await;
}

#[tokio::test]
async fn node_callback_handlers_and_handled_errors() {
    let Some(node) = need("node", &["node", "nodejs"]) else { return };
    let rt =
        Runtime::agent(&node, agents::NODE, "bootstrap.js", &functions().join("runtime-node"), &[("FC_FUNCTION_HANDLER", "index.callback")]).await;
    assert_eq!(&rt.ok(CallKind::Invoke, "cb-1", b"x").await.body[..], b"cb:x");
    let (e, v) = rt.failed("cb-2", b"fail").await;
    assert_eq!((e.error_message.as_str(), e.error_type.as_deref(), e.fc_error_type()), ("handled failure", Some("Error"), "HandledInvocationError"));
    assert_eq!(v["stackTrace"][0], "Error: handled failure");
    // No PreStop handler configured: the hook fails, clearly.
    let r = rt.call(CallKind::PreStop, "stop-none", b"").await;
    assert!(matches!(&r, Ok(Reply::Error(e)) if e.error_message.contains("no PreStop handler")), "{r:?}");
}

#[tokio::test]
async fn node_missing_handler_is_an_init_error() {
    let Some(node) = need("node", &["node", "nodejs"]) else { return };
    let mut rt =
        Runtime::agent(&node, agents::NODE, "bootstrap.js", &functions().join("runtime-node-broken"), &[("FC_FUNCTION_HANDLER", "index.handler")])
            .await;
    let e = rt.init_error().await;
    assert_eq!(e.error_message, "Handler 'handler' missing on module 'index'");
    assert!(matches!(rt.call(CallKind::Invoke, "inv", b"").await, Err(CallError::Init(_))));
}

#[tokio::test]
async fn go_sdk_function_runs_unchanged() {
    let Some(go) = need("go (golang-go)", &["go"]) else { return };
    let src = functions().join("go-sdk");
    let build = tempfile::tempdir().unwrap();
    let bin = build.path().join("fn");
    let out = tokio::process::Command::new(&go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        // Offline: the SDK stand-in is a local replace, nothing is fetched.
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", build.path().join("cache"))
        .env("GOPATH", build.path().join("gopath"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let rt = Runtime::start(&bin, &[], &src, &[]).await;

    rt.ok(CallKind::Initialize, "init-go", b"").await;
    rt.markers("Initialize", "init-go", false).await;
    rt.out.wait_line("SDK logger line", |l| is_log_line(l, "init-go", "INFO", "initialize init-go")).await;

    let deadline = SystemTime::now() + Duration::from_secs(5);
    let mut call = Call::new(CallKind::Invoke, "inv-go", deadline, Bytes::from_static(br#"{"name":"fcsup"}"#));
    call.credentials = Some(Credentials { access_key_id: "AK".into(), ..Default::default() });
    let Ok(Reply::Success(s)) = tokio::time::timeout(WAIT, rt.api.call(call)).await.unwrap() else { panic!("go invoke failed") };
    let v = json(&s);
    let deadline_ms = deadline.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(v["greeting"], "hello fcsup");
    assert_eq!(v["request_id"], "inv-go");
    assert_eq!((v["function"].as_str(), v["memory"].as_str(), v["timeout"].as_u64()), (Some("rt-fn"), Some("256"), Some(5)));
    assert_eq!((v["region"].as_str(), v["account_id"].as_str(), v["access_key_id"].as_str()), (Some("cn-hangzhou"), Some("1234567890"), Some("AK")));
    assert_eq!(v["init_request"], "init-go");
    assert_eq!(u128::from(v["deadline_ms"].as_u64().unwrap()), deadline_ms);
    rt.markers("Invoke", "inv-go", false).await;
    rt.out.wait_line("SDK logger line", |l| is_log_line(l, "inv-go", "INFO", "hello from go")).await;

    let (e, _) = rt.failed("inv-go-err", br#"{"name":"fail"}"#).await;
    assert_eq!((e.error_message.as_str(), e.error_type.as_deref()), ("cannot greet \"fail\"", Some("errorString")));
    let (e, _) = rt.failed("inv-go-panic", br#"{"name":"panic"}"#).await;
    assert_eq!((e.error_message.as_str(), e.error_type.as_deref()), ("go handler panicked", Some("string")));
    rt.markers("Invoke", "inv-go-panic", true).await;

    rt.ok(CallKind::PreStop, "stop-go", b"").await;
    rt.out.wait_line("preStop output", |l| l == "preStop ran for stop-go").await;
}

#[tokio::test]
async fn node_es_module_handlers_load() {
    let Some(node) = need("node", &["node", "nodejs"]) else { return };
    let rt =
        Runtime::agent(&node, agents::NODE, "bootstrap.js", &functions().join("runtime-node-esm"), &[("FC_FUNCTION_HANDLER", "index.handler")]).await;
    assert_eq!(&rt.ok(CallKind::Invoke, "esm-1", b"x").await.body[..], b"esm:x:esm-1");
}
