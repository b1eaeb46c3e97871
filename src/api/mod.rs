//! The front door (hyper, HTTP/1.1): FC 3.0 InvokeFunction, the HTTP trigger path, fcsup's
//! admin endpoints; errors in FC's shapes (fc-spec §3).

mod admin;
mod errors;
mod invoke;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use errors::{fc_error, function_error};
use crate::supervisor::Supervisor;

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
            (Some(name), &Method::POST) if !name.contains('/') => invoke::invoke(sup, req, name.to_string(), false, request_id).await,
            _ => fc_error(StatusCode::BAD_REQUEST, "PathNotSupported", &format!("{method} {path} is not supported"), &request_id),
        };
    }
    if let Some(rest) = path.strip_prefix("/http/") {
        let name = rest.split('/').next().unwrap_or("").to_string();
        return invoke::invoke(sup, req, name, true, request_id).await;
    }
    if method == Method::GET && path == "/metrics" {
        let instances = sup.instances().into_iter().map(|i| (i.function, format!("{:?}", i.state).to_lowercase()));
        let body = sup.host.metrics.render(instances);
        return Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("response");
    }
    if path.starts_with("/admin/") {
        if let Some(r) = admin::route(sup, req, &request_id).await {
            return r;
        }
    }
    fc_error(StatusCode::NOT_FOUND, "PathNotSupported", &format!("{method} {path} is not an fcsup endpoint"), &request_id)
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
