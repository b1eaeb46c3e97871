//! The front door (hyper, HTTP/1.1): FC 3.0 InvokeFunction, the HTTP trigger path, fcsup's
//! admin endpoints; errors in FC's shapes (`errors.rs`, `docs/errors.md`).

mod accept;
mod admin;
mod body;
mod client;
mod errors;
mod health;
mod invoke;
mod limits;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::supervisor::Supervisor;
pub use errors::{fc_error, function_error};
pub use limits::{AdminToken, FrontDoor, FrontDoorError, Limits};

/// FC 3.0 API prefix.
const INVOKE_PREFIX: &str = "/2023-03-30/functions/";

/// Response type of every handler.
pub type Resp = Response<invoke::Body>;

/// Which listener a request came through: `/admin/` is served on the admin socket (root
/// only, by its file mode) and on TCP only with the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The TCP front door: invocations, HTTP triggers, `/metrics`.
    Public,
    /// The admin Unix socket: everything.
    Admin,
}

impl std::fmt::Display for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Door::Public => "front door",
            Door::Admin => "admin socket",
        })
    }
}

/// Serves the TCP front door until `stop` flips to true; open connections finish their
/// current request.
pub async fn serve(listener: TcpListener, sup: Arc<Supervisor>, fd: Arc<FrontDoor>, stop: watch::Receiver<bool>) {
    accept::run(listener, sup, fd, Door::Public, stop).await
}

/// Serves the admin socket (see [`Supervisor::take_admin_listener`]) until `stop` flips.
pub async fn serve_admin(listener: std::os::unix::net::UnixListener, sup: Arc<Supervisor>, fd: Arc<FrontDoor>, stop: watch::Receiver<bool>) {
    match UnixListener::from_std(listener) {
        Ok(l) => accept::run(l, sup, fd, Door::Admin, stop).await,
        Err(e) => tracing::error!("cannot serve the admin socket: {e}"),
    }
}

/// Request headers' size as FC counts it: `name: value\r\n` each.
fn header_bytes(req: &Request<Incoming>) -> usize {
    req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// Routes one request.
pub async fn handle(sup: &Arc<Supervisor>, fd: &FrontDoor, door: Door, mut req: Request<Incoming>) -> Resp {
    if req.uri().path() == "/healthz" && req.method() == Method::GET {
        return health::healthz(sup);
    }
    let request_id = req
        .headers()
        .get("x-fc-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(request_id);
    let limits = &fd.limits;
    if header_bytes(&req) > limits.max_header_bytes {
        let msg = format!("request headers are larger than {} bytes", limits.max_header_bytes);
        return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &msg, &request_id);
    }
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > limits.max_path_bytes {
        let msg = format!("path and query are longer than {} bytes", limits.max_path_bytes);
        return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &msg, &request_id);
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix(INVOKE_PREFIX) {
        return match (rest.strip_suffix("/invocations"), &method) {
            (Some(raw), &Method::POST) if !raw.contains('/') => match decode_name(raw) {
                Some(name) => invoke::invoke(sup, fd, req, name, None, request_id).await,
                None => bad_name(&request_id),
            },
            _ => fc_error(StatusCode::BAD_REQUEST, "PathNotSupported", &format!("{method} {path} is not supported"), &request_id),
        };
    }
    if let Some(rest) = path.strip_prefix("/http/") {
        let raw = rest.split('/').next().unwrap_or("");
        return match decode_name(raw) {
            Some(name) => {
                client::set_headers(&mut req);
                let raw_len = raw.len();
                invoke::invoke(sup, fd, req, name, Some(raw_len), request_id).await
            }
            None => bad_name(&request_id),
        };
    }
    if method == Method::GET && path == "/metrics" {
        let instances = sup.instances().into_iter().map(|i| (i.function, format!("{:?}", i.state).to_lowercase()));
        let body = sup.reporting().metrics().render(instances);
        return Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(body)).into())
            .expect("response");
    }
    if path == "/admin" || path.starts_with("/admin/") {
        // Decided on the head alone: a refused request's body is never read.
        match (door, &fd.admin_token) {
            (Door::Admin, _) => {}
            (Door::Public, Some(token)) if token.admits(req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes())) => {}
            (Door::Public, Some(_)) => {
                let mut r = fc_error(StatusCode::UNAUTHORIZED, "Unauthorized", "/admin/ needs Authorization: Bearer <admin token>", &request_id);
                r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
                return r;
            }
            (Door::Public, None) => {
                let msg = format!("{method} {path} is served on fcsup's admin socket only");
                return fc_error(StatusCode::NOT_FOUND, "PathNotSupported", &msg, &request_id);
            }
        }
        if let Some(r) = admin::route(sup, req, &request_id).await {
            return r;
        }
    }
    fc_error(StatusCode::NOT_FOUND, "PathNotSupported", &format!("{method} {path} is not an fcsup endpoint"), &request_id)
}

/// An FC 3.0 style request id, for a request that brings none: `1-<8 hex seconds>-<24 hex>`.
fn request_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let r = uuid::Uuid::new_v4().simple().to_string();
    // FC's field is 8 hex digits: the low 32 bits of the seconds.
    format!("1-{:08x}-{}", secs & 0xffff_ffff, &r[..24])
}

/// A function name from the URL, percent-decoded once; `None` when that is not UTF-8.
fn decode_name(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw).decode_utf8().ok().map(|n| n.into_owned())
}

fn bad_name(request_id: &str) -> Resp {
    fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", "the function name is not UTF-8 once percent-decoded", request_id)
}

fn not_found(name: &str, request_id: &str) -> Resp {
    fc_error(StatusCode::NOT_FOUND, "FunctionNotFound", &format!("function '{name}' does not exist"), request_id)
}

fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("").split('&').filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

fn json<T: serde::Serialize>(v: &T) -> Resp {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body)).into()).expect("response")
}

fn text(s: String) -> Resp {
    Response::builder().header("content-type", "text/plain; charset=utf-8").body(Full::new(Bytes::from(s)).into()).expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_have_fc_shape() {
        let r = request_id();
        assert_eq!(r.len(), 2 + 8 + 1 + 24, "{r}");
        assert!(r.starts_with("1-") && r[2..].chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{r}");
        assert_ne!(r, request_id());
    }
}
