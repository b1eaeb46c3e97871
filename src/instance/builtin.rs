//! Built-in runtimes (`python3.10`, `nodejs18`, `go1`, …; README, Built-in runtimes): what an
//! instance runs (fcsup's agent under the host's interpreter, or a Go SDK program), the
//! environment FC gives it, its layers at `/opt`, and FC's runtime API served to it inside
//! its network namespace. Calls, hooks and their answers go over that API
//! (`src/runtime_api/`) instead of HTTP into the function.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::StatusCode;

use super::{hooks, HookError, HookKind, Instance, Kernel, StartError};
use crate::config::{Function, Language};
use crate::runtime_api::{self, agents, CallKind, InstanceInfo, Reply as AgentReply, RuntimeApi};
use crate::sandbox::{GrantMount, Netns, SandboxSpec};

/// Where the runtime API listens inside each instance, and so `FC_RUNTIME_API`: the address
/// FC's own runtime clients fall back to (the PHP runtime's `127.0.0.1:19001`,
/// docs/runtime-api.md). Loopback of the instance's own network namespace: only it reaches it.
pub const RUNTIME_API_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 19001);

/// Runs the Python agent's source (`sys.argv[1]`) as `__main__`, named
/// `/var/fc/runtime/python/bootstrap.py` (its frames are left out of a `stackTrace` by that
/// name): passed on the command line, the agent needs no file in the instance.
const PYTHON_LOADER: &str =
    "import sys;f='/var/fc/runtime/python/bootstrap.py';exec(compile(sys.argv.pop(1),f,'exec'),{'__name__':'__main__','__file__':f})";

/// Host directories an instance sees (read-only), and so where an interpreter must live.
const VISIBLE: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/", "/etc/", "/opt/"];

/// Where a bare interpreter name is looked up: the instance's own `PATH`, as the host has it.
const SEARCH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// Several layers merged for one start: an overlay on a temporary directory of the host,
/// detached once the instance has cloned it (dropped after the spawn), so nothing stays
/// mounted.
pub(super) struct Merged {
    dir: PathBuf,
    mounted: bool,
}

impl Drop for Merged {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!("cannot detach the merged layers at {}: {e}", self.dir.display());
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Merged {
    /// `layers` in one read-only overlay, the first on top: FC merges them at `/opt` so that a
    /// file in an earlier layer hides the same file in a later one.
    fn mount(layers: &[PathBuf]) -> Result<Merged, StartError> {
        let failed = |what: String| move |e: std::io::Error| StartError::Runtime(format!("cannot merge the function's layers: {what}: {e}"));
        let mut lower = Vec::with_capacity(layers.len());
        for l in layers {
            let Some(s) = l.to_str().filter(|s| !s.contains([':', ',', '\\'])) else {
                return Err(StartError::Runtime(format!(
                    "layer directory {} has ':', ',' or '\\' in its path, which overlayfs cannot take",
                    l.display()
                )));
            };
            lower.push(s);
        }
        let dir = std::env::temp_dir().join(format!("fcsup-layers-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).map_err(failed(format!("create {}", dir.display())))?;
        // From here on, dropping it removes the directory (and detaches whatever is there).
        let mut merged = Merged { dir, mounted: false };
        let data = format!("lowerdir={}", lower.join(":"));
        let flags = nix::mount::MsFlags::MS_RDONLY | nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        nix::mount::mount(Some("overlay"), &merged.dir, Some("overlay"), flags, Some(data.as_str()))
            .map_err(|e| failed(format!("mount overlayfs with {data}"))(e.into()))?;
        merged.mounted = true;
        Ok(merged)
    }
}

/// Completes an instance's sandbox spec for its runtime: the layers at `/opt` (every runtime
/// but custom containers) and, for a built-in runtime, the command and FC's environment. Keep
/// what it returns until the process has been spawned.
pub(super) fn prepare(function: &Function, spec: &mut SandboxSpec) -> Result<Option<Merged>, StartError> {
    let merged = match function.layers.as_slice() {
        [] => None,
        [one] => {
            spec.grants.mounts.push(GrantMount { host: one.clone(), target: "/opt".into() });
            None
        }
        more => {
            let m = Merged::mount(more)?;
            spec.grants.mounts.push(GrantMount { host: m.dir.clone(), target: "/opt".into() });
            Some(m)
        }
    };
    let Some(builtin) = &function.builtin else { return Ok(merged) };
    spec.argv = match builtin.language {
        Language::Python => {
            let python = interpreter(&function.runtime, builtin.interpreter.as_deref().unwrap_or("python3"), "python3")?;
            vec![python, "-u".into(), "-c".into(), PYTHON_LOADER.into(), agents::PYTHON.into()]
        }
        Language::Node => {
            let node = interpreter(&function.runtime, builtin.interpreter.as_deref().unwrap_or("node"), "nodejs")?;
            vec![node, "-e".into(), agents::NODE.into()]
        }
        Language::Go => {
            let program = function.code_dir.join(&function.handler);
            if !program.is_file() {
                return Err(StartError::Runtime(format!(
                    "runtime go1: {} is not in the code directory: build the function into it (GOOS=linux GOARCH=amd64 go build -o {} .), \
                     the handler naming the program",
                    function.handler, function.handler
                )));
            }
            vec![format!("/code/{}", function.handler)]
        }
    };
    spec.env = environment(function, &spec.hostname);
    Ok(merged)
}

/// FC's environment for a built-in runtime: the custom runtime's, without its port, plus the
/// runtime API, the hooks' names and the languages' search paths (FC's layer directories).
fn environment(function: &Function, instance_id: &str) -> Vec<(String, String)> {
    let mut env = hooks::environment(function, instance_id);
    env.retain(|(k, _)| !matches!(k.as_str(), "FC_CUSTOM_LISTEN_PORT" | "FC_SERVER_PORT"));
    let mut fc = vec![("FC_RUNTIME_API".to_string(), RUNTIME_API_ADDR.to_string())];
    if let Some(p) = &function.pre_stop {
        fc.push(("FC_PRE_STOP_HANDLER".into(), p.handler.clone()));
    }
    // FC's layer table: /opt/bin on PATH (already), /opt/lib on LD_LIBRARY_PATH, and each
    // language's directory on its search path.
    let mut defaults = vec![("LD_LIBRARY_PATH", "/code:/code/lib:/usr/local/lib:/opt/lib")];
    match function.builtin.as_ref().map(|b| b.language) {
        Some(Language::Python) => defaults.push(("PYTHONPATH", "/code:/code/python:/opt/python")),
        Some(Language::Node) => defaults.push(("NODE_PATH", "/code/node_modules:/opt/nodejs/node_modules")),
        _ => {}
    }
    for (k, v) in defaults {
        // The function's own variable wins.
        if !function.env.contains_key(k) {
            fc.push((k.into(), v.into()));
        }
    }
    for (k, v) in fc {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env
}

/// The host path of `runtime`'s interpreter `name` (a path, or a program looked up in
/// [`SEARCH`]); an error that names the runtime and what to install when there is none an
/// instance could run.
fn interpreter(runtime: &str, name: &str, package: &str) -> Result<String, StartError> {
    let candidates: Vec<PathBuf> =
        if name.contains('/') { vec![PathBuf::from(name)] } else { SEARCH.iter().map(|d| Path::new(d).join(name)).collect() };
    let found = candidates.iter().find(|p| is_executable(p));
    let Some(path) = found else {
        let looked = if name.contains('/') { name.to_string() } else { format!("{name} in {}", SEARCH.join(", ")) };
        return Err(StartError::Runtime(format!(
            "runtime {runtime} needs its interpreter, and there is none ({looked}): install it on the host (e.g. apt-get install {package}) \
             or name one with fcsup.interpreter"
        )));
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    if !VISIBLE.iter().any(|d| real.starts_with(d)) {
        return Err(StartError::Runtime(format!(
            "runtime {runtime}: interpreter {} ({}) is not visible inside instances, which see the host's /usr, /bin, /sbin, /lib*, /etc and /opt \
             only: install it under /usr (or /opt) and name it with fcsup.interpreter",
            path.display(),
            real.display()
        )));
    }
    Ok(path.display().to_string())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Serves FC's runtime API to a new instance of a built-in runtime, on a listener made inside
/// its network namespace `netns` (before the process starts, so its first poll connects).
pub(super) fn serve(function: &Function, netns: &Netns, instance_id: &str) -> Result<Option<RuntimeApi>, StartError> {
    if function.builtin.is_none() {
        return Ok(None);
    }
    let listener = netns.listen(RUNTIME_API_ADDR).map_err(|source| {
        StartError::Sandbox(crate::sandbox::SandboxError::Setup { op: format!("listen on {RUNTIME_API_ADDR} for the runtime API"), source })
    })?;
    let info = InstanceInfo {
        function_name: function.name.clone(),
        handler: function.handler.clone(),
        memory_mb: function.memory_mb,
        timeout_s: function.timeout.as_secs(),
        initializer: function.initializer.as_ref().map(|h| h.handler.clone()),
        initialization_timeout_s: function.initializer.as_ref().map(|h| h.timeout.as_secs()),
        pre_stop_handler: function.pre_stop.as_ref().map(|h| h.handler.clone()),
        pre_freeze_handler: None,
        region: function.region.clone(),
        account_id: "local".into(),
        qualifier: "LATEST".into(),
        version_id: "LATEST".into(),
        instance_id: instance_id.into(),
        ..InstanceInfo::default()
    };
    let api = RuntimeApi::serve_std(listener, info)
        .map_err(|source| StartError::Sandbox(crate::sandbox::SandboxError::Setup { op: "serve the runtime API".into(), source }))?;
    Ok(Some(api))
}

/// How a call over the runtime API ended, short of an answer.
pub(super) enum CallFailed {
    /// Past its deadline (the call is withdrawn).
    Timeout,
    /// The process exited first.
    Exited,
    /// The runtime refused or lost the call.
    Runtime(runtime_api::CallError),
}

impl<K: Kernel> Instance<K> {
    /// The instance's runtime API (built-in runtimes only).
    pub(super) fn runtime_api(&self) -> Option<&RuntimeApi> {
        self.runtime_api.as_ref()
    }

    /// Hands one call to the agent and waits for its answer, at most `timeout`, or until the
    /// process exits.
    pub(super) async fn runtime_call(
        &self,
        api: &RuntimeApi,
        kind: CallKind,
        request_id: &str,
        timeout: Duration,
        body: Bytes,
        retry_count: u32,
    ) -> Result<AgentReply, CallFailed> {
        let mut call = runtime_api::Call::new(kind, request_id, SystemTime::now() + timeout, body);
        call.retry_count = retry_count;
        let mut life = self.life.subscribe();
        tokio::select! {
            r = tokio::time::timeout(timeout, api.call(call)) => match r {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(CallFailed::Runtime(e)),
                Err(_) => Err(CallFailed::Timeout),
            },
            _ = life.wait_for(|l| l.exit().is_some()) => Err(CallFailed::Exited),
        }
    }

    /// A lifecycle hook over the runtime API (the agent prints FC's markers itself).
    pub(super) async fn call_hook_runtime(&self, api: &RuntimeApi, kind: HookKind, timeout: Duration) -> Result<StatusCode, HookError> {
        let (call_kind, marker) = match kind {
            HookKind::Initialize => (CallKind::Initialize, "Initialize"),
            HookKind::PreFreeze => (CallKind::PreFreeze, "PreFreeze"),
            HookKind::PreStop => (CallKind::PreStop, "PreStop"),
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        self.log.begin(&request_id);
        let r = self.runtime_call(api, call_kind, &request_id, timeout, Bytes::new(), 0).await;
        self.log.end(&request_id);
        tracing::debug!(function = %self.function.name, instance = %self.id, request_id, "FC {marker} over the runtime API");
        match r {
            Ok(AgentReply::Success(_)) => Ok(StatusCode::OK),
            Ok(AgentReply::Error(e)) => Err(HookError::Raised(e)),
            Err(CallFailed::Timeout) => Err(HookError::Timeout { hook: marker, secs: timeout.as_secs() }),
            Err(CallFailed::Exited) => Err(HookError::Exited),
            Err(CallFailed::Runtime(e)) => Err(HookError::Runtime(e)),
        }
    }
}

/// What an answered invocation comes to: an API invoke's result as it is; an HTTP trigger's
/// read as FC 3.0's `{statusCode, headers, body, isBase64Encoded}`; a failure as FC's function
/// error (the body as the agent posted it, and its `x-fc-error-type`).
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub error_type: Option<&'static str>,
}

pub(super) fn answer(reply: AgentReply, http_trigger: bool) -> Answer {
    let ok = |status, headers, body| Answer { status, headers, body, error_type: None };
    match reply {
        AgentReply::Success(s) if !http_trigger => ok(StatusCode::OK, HeaderMap::new(), s.body),
        AgentReply::Success(s) => match runtime_api::http_event::response(&s.body) {
            Ok(r) => ok(r.status, r.headers, r.body),
            Err(bad) => {
                let body = serde_json::json!({
                    "errorMessage": format!("the function's result is not a valid HTTP trigger response: {}", bad.0),
                    "errorType": "InvalidResponse",
                    "stackTrace": [],
                });
                function_error(super::UNHANDLED, Bytes::from(body.to_string()))
            }
        },
        AgentReply::Error(e) => function_error(e.fc_error_type(), e.body),
    }
}

fn function_error(error_type: &'static str, body: Bytes) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Answer { status: StatusCode::OK, headers, body, error_type: Some(error_type) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_are_found_or_named_with_what_to_install() {
        let e = interpreter("python3.10", "python3.10-missing-here", "python3.10").unwrap_err().to_string();
        assert!(e.contains("runtime python3.10 needs its interpreter"), "{e}");
        assert!(e.contains("apt-get install python3.10") && e.contains("fcsup.interpreter"), "{e}");
        let e = interpreter("nodejs18", "/nonexistent/node", "nodejs").unwrap_err().to_string();
        assert!(e.contains("(/nonexistent/node)"), "{e}");
        let sh = interpreter("x", "sh", "sh").unwrap();
        assert!(SEARCH.iter().any(|d| sh == format!("{d}/sh")), "{sh}");
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let fake = dir.path().join("python3");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = interpreter("python3", &fake.display().to_string(), "python3").unwrap_err().to_string();
        assert!(e.contains("not visible inside instances"), "{e}");
    }

    #[test]
    fn agent_errors_become_fc_function_errors() {
        let e = runtime_api::AgentError::parse(Bytes::from_static(br#"{"errorMessage":"bad","errorType":"ValueError"}"#), false);
        let a = answer(AgentReply::Error(e), false);
        assert_eq!((a.status, a.error_type), (StatusCode::OK, Some("UnhandledInvocationError")));
        assert_eq!(&a.body[..], br#"{"errorMessage":"bad","errorType":"ValueError"}"#);
        let e = runtime_api::AgentError::parse(Bytes::from_static(br#"{"errorMessage":"cb"}"#), true);
        assert_eq!(answer(AgentReply::Error(e), true).error_type, Some("HandledInvocationError"));
        let ok = |b: &'static [u8]| AgentReply::Success(runtime_api::Success { body: Bytes::from_static(b), content_type: None, http_params: None });
        let a = answer(ok(br#"{"statusCode":201,"body":"made"}"#), true);
        assert_eq!((a.status, &a.body[..], a.error_type), (StatusCode::CREATED, &b"made"[..], None));
        let a = answer(ok(br#"{"statusCode":201,"body":"made"}"#), false);
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &br#"{"statusCode":201,"body":"made"}"#[..]), "an API invoke's result is as it is");
        let a = answer(ok(br#"{"statusCode":"x"}"#), true);
        assert_eq!((a.status, a.error_type), (StatusCode::OK, Some("UnhandledInvocationError")));
        assert!(String::from_utf8_lossy(&a.body).contains("not a valid HTTP trigger response"), "{:?}", a.body);
    }
}
