//! `PUT` and `DELETE /admin/functions/NAME` on a node in node mode: the body was validated as in
//! file mode, the change goes to etcd, and the answer comes once this node has applied it
//! through its own watch, as every other node does.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::node::{Node, Written};
use crate::api::{fc_error, Resp};

/// Writes the function's `props` (`text`, validated already) to etcd as JSON, its relative
/// paths made absolute against `base`.
pub async fn put(node: &Node, name: &str, text: &str, base: &Path, request_id: &str) -> Resp {
    let mut props = match super::props::to_json(text) {
        Ok(p) => p,
        Err(e) => return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &e, request_id),
    };
    super::props::absolute_paths(&mut props, base);
    match node.put(name, &props.to_string()).await {
        Ok(w) => answer(&w, name, if w.existed { StatusCode::OK } else { StatusCode::CREATED }, request_id),
        Err(e) => unavailable(&e, request_id),
    }
}

/// Deletes the function's key; every node's instances of it drain.
pub async fn delete(node: &Node, name: &str, request_id: &str) -> Resp {
    match node.delete(name).await {
        Ok(w) if !w.existed => fc_error(StatusCode::NOT_FOUND, "FunctionNotFound", &format!("function '{name}' does not exist in etcd"), request_id),
        Ok(w) => answer(&w, name, StatusCode::OK, request_id),
        Err(e) => unavailable(&e, request_id),
    }
}

fn unavailable(e: &super::EtcdError, request_id: &str) -> Resp {
    fc_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &format!("{e}; nothing was changed"), request_id)
}

/// 200/201 once applied here; 202 when not yet (the write stands, the nodes apply it through
/// their watches); 400 when it was stored but cannot start on this node.
fn answer(w: &Written, name: &str, done: StatusCode, request_id: &str) -> Resp {
    let status = match &w.applied {
        Some(Ok(())) => done,
        None => StatusCode::ACCEPTED,
        Some(Err(e)) => {
            let message = format!("stored in etcd at revision {}, but this node cannot run it (each node tries): {e}", w.revision);
            return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &message, request_id);
        }
    };
    let body = serde_json::json!({
        "functionName": name,
        "replaced": w.existed,
        "revision": w.revision,
        "applied": w.applied.is_some(),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).into())
        .expect("response")
}
