//! A minimal HTTP/1.1 client for `fcsup invoke`, `fcsup ps` and the demo.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Response {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Sends one request to `addr` (host:port) and reads the whole response.
pub async fn request(addr: &str, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> std::io::Result<Response> {
    let err = |e: hyper::Error| std::io::Error::other(e.to_string());
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(err)?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(std::io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(err)?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(err)?.to_bytes();
    Ok(Response { status: parts.status, headers: parts.headers, body })
}
