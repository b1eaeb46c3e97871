//! What the instance sees from fcsup: its environment (README, What an instance sees), the common request headers
//! (§1.2) and the lifecycle hooks (`POST /initialize`, `GET /pre-freeze`, `GET /pre-stop`).

use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::{HookError, Instance, Kernel};
use crate::config::Function;

/// A lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `POST /initialize`.
    Initialize,
    /// `GET /pre-freeze` (FC 2.0).
    PreFreeze,
    /// `GET /pre-stop`.
    PreStop,
}

impl HookKind {
    fn request(self) -> (Method, &'static str, &'static str, &'static str) {
        // (method, path, x-fc-function-type, log marker)
        match self {
            HookKind::Initialize => (Method::POST, "/initialize", "1", "Initialize"),
            HookKind::PreFreeze => (Method::GET, "/pre-freeze", "3", "PreFreeze"),
            HookKind::PreStop => (Method::GET, "/pre-stop", "2", "PreStop"),
        }
    }
}

/// The instance's environment: FC's system variables, then the user's.
pub fn environment(f: &Function, instance_id: &str) -> Vec<(String, String)> {
    let port = f.port.to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:/code:/code/bin:/opt/bin".into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("FC_FUNC_CODE_PATH".into(), "/code/".into()),
        ("FC_ACCOUNT_ID".into(), "local".into()),
        ("FC_FUNCTION_HANDLER".into(), f.handler.clone()),
        ("FC_HANDLER".into(), f.handler.clone()),
        ("FC_FUNCTION_MEMORY_SIZE".into(), f.memory_mb.to_string()),
        ("FC_MEMORY_SIZE".into(), f.memory_mb.to_string()),
        ("FC_FUNCTION_NAME".into(), f.name.clone()),
        ("FC_REGION".into(), f.region.clone()),
        ("FC_CUSTOM_LISTEN_PORT".into(), port.clone()),
        ("FC_SERVER_PORT".into(), port),
        ("FC_INSTANCE_ID".into(), instance_id.into()),
        ("FC_CONTAINER_ID".into(), instance_id.into()),
        ("FC_FUNCTION_VERSION".into(), "LATEST".into()),
        ("FC_VER_ID".into(), "LATEST".into()),
        ("FC_QUALIFIER".into(), "LATEST".into()),
        ("FC_RUNTIME".into(), f.runtime.clone()),
        ("FC_TIMEOUT".into(), f.timeout.as_secs().to_string()),
        ("FC_FUNC_LOG_PATH".into(), "/tmp/log/fc".into()),
    ];
    if let Some(h) = &f.initializer {
        env.push(("FC_INITIALIZER_HANDLER".into(), h.handler.clone()));
        env.push(("FC_INITIALIZATION_TIMEOUT".into(), h.timeout.as_secs().to_string()));
    }
    for (k, v) in &f.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// A custom container's environment, as runc builds it and FC adds to it: the image's `Env`,
/// then FC's variables, then the function's own; `PATH` and `HOME` default as Docker's do when
/// none of them sets one. FC's custom-runtime defaults (`PATH` with `/code`, `HOME=/tmp`,
/// `LANG`, `FC_FUNC_CODE_PATH`) are not added: the image has its own.
pub fn container_environment(f: &Function, instance_id: &str, image_env: &[String], uid: u32) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        image_env.iter().map(|kv| kv.split_once('=').map_or((kv.clone(), String::new()), |(k, v)| (k.into(), v.into()))).collect();
    let fc = environment(f, instance_id);
    let custom_only = ["PATH", "HOME", "LANG", "FC_FUNC_CODE_PATH"];
    for (k, v) in fc.into_iter().filter(|(k, _)| !custom_only.contains(&k.as_str()) || f.env.contains_key(k)) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), if uid == 0 { "/root" } else { "/" }.into()));
    }
    env
}

/// FC's common headers (README, What an instance sees) that are the same on every request to one instance,
/// built once at spawn; [`add_request_headers`] adds them with the per-request ones.
pub fn instance_headers(f: &Function, instance_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set("x-fc-function-name", &f.name);
    set("x-fc-function-handler", &f.handler);
    set("x-fc-function-memory", &f.memory_mb.to_string());
    set("x-fc-function-timeout", &f.timeout.as_secs().to_string());
    set("x-fc-region", &f.region);
    set("x-fc-account-id", "local");
    set("x-fc-qualifier", "LATEST");
    set("x-fc-version-id", "LATEST");
    set("x-fc-instance-id", instance_id);
    set("x-fc-retry-count", "0");
    if let Some(i) = &f.initializer {
        set("x-fc-function-initializer", &i.handler);
        set("x-fc-initialization-timeout", &i.timeout.as_secs().to_string());
    }
    if let Some(p) = &f.pre_stop {
        set("x-fc-instance-lifecycle-pre-stop-handler", &p.handler);
    }
    if let Some(p) = &f.pre_freeze {
        set("x-fc-instance-lifecycle-pre-freeze-handler", &p.handler);
    }
    h
}

/// Adds the instance's common headers plus the request id, control path and function type.
pub fn add_request_headers(base: &HeaderMap, request_id: &str, control_path: &'static str, fn_type: &'static str, h: &mut HeaderMap) {
    for (k, v) in base {
        h.insert(k.clone(), v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-fc-request-id", v);
    }
    if !control_path.is_empty() {
        h.insert("x-fc-control-path", HeaderValue::from_static(control_path));
    }
    h.insert("x-fc-function-type", HeaderValue::from_static(fn_type));
}

impl<K: Kernel> Instance<K> {
    /// Calls a configured hook with its own request id and timeout; the status it answered.
    pub(super) async fn call_hook(&self, kind: HookKind) -> Result<StatusCode, HookError> {
        let f = &self.function;
        let hook = match kind {
            HookKind::Initialize => &f.initializer,
            HookKind::PreFreeze => &f.pre_freeze,
            HookKind::PreStop => &f.pre_stop,
        };
        let Some(hook) = hook else { return Ok(StatusCode::OK) };
        if let Some(api) = self.runtime_api() {
            return self.call_hook_runtime(api, kind, hook.timeout).await;
        }
        let (method, path, fn_type, marker) = kind.request();
        let request_id = uuid::Uuid::new_v4().to_string(); // FC gives hooks plain UUIDs
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", f.port))
            .body(Full::new(bytes::Bytes::new()))
            .expect("a hook request is well-formed");
        let control = if kind == HookKind::Initialize { "/initialize" } else { "" };
        add_request_headers(&self.fc_headers, &request_id, control, fn_type, req.headers_mut());
        self.log.note(&format!("FC {marker} Start RequestId: {request_id}"));
        self.log.begin(&request_id);
        tracing::debug!(function = %f.name, instance = %self.id, request_id, "FC {marker} Start");
        let r = match tokio::time::timeout(hook.timeout, self.conns.status_of(&self.kernel, req)).await {
            Ok(r) => r.map_err(HookError::from),
            Err(_) => Err(HookError::Timeout { hook: marker, secs: hook.timeout.as_secs() }),
        };
        self.log.end(&request_id);
        match &r {
            Ok(status) => self.log.note(&format!("FC {marker} End RequestId: {request_id}, Status: {}", status.as_u16())),
            Err(e) => self.log.note(&format!("FC {marker} End RequestId: {request_id}, Error: {e}")),
        }
        tracing::debug!(function = %f.name, instance = %self.id, request_id, outcome = ?r, "FC {marker} End");
        r
    }
}
