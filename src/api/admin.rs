//! fcsup's own endpoints under `/admin/`: instances, their logs, the ledger, Async task
//! status, reclaim, and setting a function's configuration.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::{fc_error, json, not_found, text, Resp};
use crate::config::Config;
use crate::supervisor::Supervisor;

/// Routes `/admin/…`; `None` when no admin endpoint matches.
pub async fn route(sup: &Arc<Supervisor>, req: Request<Incoming>, request_id: &str) -> Option<Resp> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segs: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    Some(match (&method, segs.as_slice()) {
        (&Method::GET, ["instances"]) => json(&sup.instances()),
        (&Method::GET, ["instances", id, "logs"]) => match sup.instance(id) {
            Some(i) => text(i.log.recent().join("\n") + "\n"),
            None => fc_error(StatusCode::NOT_FOUND, "InstanceNotFound", &format!("instance {id} does not exist"), request_id),
        },
        (&Method::GET, ["instances", id, "hazards"]) => match sup.instance(id) {
            Some(i) => {
                json(&i.hazards(super::query(req.uri().query()).iter().find(|(k, _)| k == "last").and_then(|(_, v)| v.parse().ok()).unwrap_or(20)))
            }
            None => fc_error(StatusCode::NOT_FOUND, "InstanceNotFound", &format!("instance {id} does not exist"), request_id),
        },
        (&Method::GET, ["hazards"]) => json(&sup.reporting().hazards().summary()),
        (&Method::GET, ["ledger"]) => ledger(sup, req.uri().query()),
        (&Method::GET, ["async", id]) => match sup.async_queue.status(id) {
            Some(s) => json(&s),
            None => fc_error(StatusCode::NOT_FOUND, "AsyncTaskNotFound", &format!("async task {id} does not exist"), request_id),
        },
        (&Method::POST, ["functions", name, "reclaim"]) => match sup.pool(name) {
            Some(pool) => {
                pool.reclaim_all().await;
                text("reclaimed\n".into())
            }
            None => not_found(name, request_id),
        },
        (&Method::PUT, ["functions", name]) => {
            let name = name.to_string();
            put_function(sup, req, &name, request_id).await
        }
        (&Method::DELETE, ["functions", name]) => match sup.node.get() {
            Some(node) => crate::etcd::admin::delete(node, name, request_id).await,
            // File mode: until the next reload, as PUT.
            None if sup.remove_function(name) => json(&serde_json::json!({ "functionName": name, "removed": true })),
            None => not_found(name, request_id),
        },
        (&Method::GET, ["source"]) => json(&sup.health.source()),
        _ => return None,
    })
}

fn ledger(sup: &Supervisor, query: Option<&str>) -> Resp {
    let q = super::query(query);
    let get = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    let since = get("since").and_then(|v| v.parse().ok());
    let mut body = Vec::new();
    for r in sup.reporting().ledger().query(get("function"), get("instance"), since) {
        let _ = serde_json::to_writer(&mut body, &r);
        body.push(b'\n');
    }
    Response::builder().header("content-type", "application/x-ndjson").body(Full::new(Bytes::from(body)).into()).expect("response")
}

/// `PUT /admin/functions/{name}` with the function's `props` (YAML or JSON): creates it or
/// replaces its instances; requests in flight finish on the old ones.
async fn put_function(sup: &Arc<Supervisor>, req: Request<Incoming>, name: &str, request_id: &str) -> Resp {
    let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &format!("cannot read the body: {e}"), request_id),
    };
    let text = String::from_utf8_lossy(&body);
    let f = match Config::parse_function(&text, name, &sup.config_base) {
        Ok(f) => f,
        Err(e) => return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &e.to_string(), request_id),
    };
    if let Some(node) = sup.node.get() {
        return crate::etcd::admin::put(node, name, &text, &sup.config_base, request_id).await;
    }
    match sup.set_function(f).await {
        Ok(existed) => {
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            let body = serde_json::json!({ "functionName": name, "replaced": existed });
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).into())
                .expect("response")
        }
        Err(e) => fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &e.to_string(), request_id),
    }
}
