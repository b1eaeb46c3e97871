//! The front door (hyper, HTTP/1.1): FC 3.0 InvokeFunction, the HTTP trigger path, the admin
//! endpoints; errors in FC's shapes (fc-spec §3).

mod errors;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use errors::{fc_error, function_error};
use crate::instance::{Call, InvokeError};
use crate::supervisor::Supervisor;

/// Largest synchronous request body FC accepts (32 MB).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// FC 3.0 API prefix.
const INVOKE_PREFIX: &str = "/2023-03-30/functions/";

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Serves until `stop` flips to true; open connections finish their current request.
pub async fn serve(listener: TcpListener, sup: Arc<Supervisor>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => {
                if *stop.borrow() { return } else { continue }
            }
        };
        let _ = stream.set_nodelay(true);
        let sup = sup.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sup = sup.clone();
                async move { Ok::<_, Infallible>(handle(&sup, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
}

/// Routes one request.
pub async fn handle(sup: &Arc<Supervisor>, req: Request<Incoming>) -> Resp {
    let request_id = req
        .headers()
        .get("x-fc-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(crate::util::request_id);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix(INVOKE_PREFIX) {
        return match (rest.strip_suffix("/invocations"), &method) {
            (Some(name), &Method::POST) if !name.contains('/') => invoke(sup, req, name.to_string(), false, request_id).await,
            _ => fc_error(StatusCode::BAD_REQUEST, "PathNotSupported", &format!("{method} {path} is not supported"), &request_id),
        };
    }
    if let Some(rest) = path.strip_prefix("/http/") {
        let name = rest.split('/').next().unwrap_or("").to_string();
        return invoke(sup, req, name, true, request_id).await;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/admin/instances") => json(&sup.instances()),
        (&Method::GET, "/admin/ledger") => {
            let q = query(req.uri().query());
            let since = q.iter().find(|(k, _)| k == "since").and_then(|(_, v)| v.parse().ok());
            let get = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
            let recs = sup.host.ledger.query(get("function"), get("instance"), since);
            let mut body = Vec::new();
            for r in recs {
                let _ = serde_json::to_writer(&mut body, &r);
                body.push(b'\n');
            }
            Response::builder().header("content-type", "application/x-ndjson").body(Full::new(Bytes::from(body))).expect("response")
        }
        (&Method::GET, p) if p.starts_with("/admin/instances/") && p.ends_with("/logs") => {
            let id = &p["/admin/instances/".len()..p.len() - "/logs".len()];
            match sup.instance(id) {
                Some(i) => text(i.log.recent().join("\n") + "\n"),
                None => fc_error(StatusCode::NOT_FOUND, "InstanceNotFound", &format!("instance {id} does not exist"), &request_id),
            }
        }
        (&Method::POST, p) if p.starts_with("/admin/functions/") && p.ends_with("/reclaim") => {
            let name = &p["/admin/functions/".len()..p.len() - "/reclaim".len()];
            match sup.pools.get(name) {
                Some(pool) => {
                    pool.shutdown().await;
                    text("reclaimed\n".into())
                }
                None => not_found(name, &request_id),
            }
        }
        _ => fc_error(StatusCode::NOT_FOUND, "PathNotSupported", &format!("{method} {path} is not an fcsup endpoint"), &request_id),
    }
}

fn not_found(name: &str, request_id: &str) -> Resp {
    fc_error(StatusCode::NOT_FOUND, "FunctionNotFound", &format!("function '{name}' does not exist"), request_id)
}

fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> Resp {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body))).expect("response")
}

fn text(s: String) -> Resp {
    Response::builder().header("content-type", "text/plain; charset=utf-8").body(Full::new(Bytes::from(s))).expect("response")
}

async fn invoke(sup: &Arc<Supervisor>, req: Request<Incoming>, name: String, http_trigger: bool, request_id: String) -> Resp {
    let Some(pool) = sup.pools.get(&name).cloned() else { return not_found(&name, &request_id) };
    let tail = req.headers().get("x-fc-log-type").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"));
    if let Some(t) = req.headers().get("x-fc-invocation-type") {
        if !t.as_bytes().eq_ignore_ascii_case(b"sync") {
            let msg = format!("x-fc-invocation-type {:?} is not supported yet: use Sync", t);
            return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &msg, &request_id);
        }
    }
    let path_and_query = if http_trigger {
        let full = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let after = &full["/http/".len() + name.len()..];
        if after.is_empty() || after.starts_with('?') { format!("/{after}") } else { after.to_string() }
    } else {
        "/invoke".into()
    };
    if path_and_query.len() > 4096 {
        return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", "path and query are longer than 4 KB", &request_id);
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                "request body is larger than 32 MB".to_string()
            } else {
                format!("cannot read the request body: {e}")
            };
            return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &msg, &request_id);
        }
    };
    let call = Call {
        http_trigger,
        request_id: request_id.clone(),
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        body,
        init_failures_seen: 0,
        want_log: tail,
    };
    let d = pool.dispatch(call).await;
    let mut resp = match d.result {
        Ok(reply) => {
            let failed = !http_trigger
                && (reply.status == StatusCode::NOT_FOUND
                    || reply.headers.get("x-fc-status").is_some_and(|v| v.as_bytes() == b"404"));
            let mut b = Response::builder();
            if http_trigger {
                b = b.status(reply.status);
                for (k, v) in &reply.headers {
                    let n = k.as_str();
                    if n.starts_with("x-fc-")
                        || matches!(n, "connection" | "content-length" | "date" | "keep-alive" | "server" | "upgrade" | "transfer-encoding")
                    {
                        continue;
                    }
                    b = b.header(k, v);
                }
            } else if failed {
                b = b.header("x-fc-error-type", "UnhandledInvocationError");
            }
            let mut r = b
                .header("x-fc-invocation-duration", (reply.duration.as_micros().div_ceil(1000)).to_string())
                .header("x-fc-max-memory-usage", format!("{:.2}", reply.max_memory_mb))
                .header("x-fcsup-cpu-time-us", reply.cpu_usec.to_string())
                .body(Full::new(reply.body))
                .expect("response");
            if tail {
                let summary = format!(
                    "Duration: {:.2} ms, Billed Duration: {} ms, Memory Size: {} MB, Max Memory Used: {:.2} MB",
                    reply.duration.as_secs_f64() * 1000.0,
                    reply.duration.as_micros().div_ceil(1000),
                    pool.function.memory_mb,
                    reply.max_memory_mb
                );
                let log = crate::logs::tail(&request_id, &reply.log, &summary);
                if let Ok(v) = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(log)) {
                    r.headers_mut().insert("x-fc-log-result", v);
                }
            }
            r
        }
        Err(InvokeError::Throttled(m)) => fc_error(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted", &m, &request_id),
        Err(InvokeError::Gone) => fc_error(StatusCode::SERVICE_UNAVAILABLE, "ResourceThrottled", &InvokeError::Gone.to_string(), &request_id),
        Err(InvokeError::Internal(m)) => fc_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &m, &request_id),
        Err(e @ InvokeError::Initialization(_)) => function_error("InitializationError", &e.to_string()),
        Err(e) => function_error("UnhandledInvocationError", &e.to_string()),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-fc-request-id", v);
    }
    if let Some(id) = d.instance_id.and_then(|i| HeaderValue::from_str(&i).ok()) {
        h.insert("x-fc-instance-id", id);
    }
    h.insert("x-fcsup-cold-start", HeaderValue::from_static(if d.cold_start { "true" } else { "false" }));
    resp
}
