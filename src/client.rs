//! A minimal HTTP/1.1 client for `fcsup invoke`, `fcsup ps`, `fcsup report` and the demo:
//! over TCP, or over the admin Unix socket (where `/admin/` is served).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// The largest answer read (a node's whole ledger fits many times over; a peer that sends
/// without end must not take the command's memory with it).
const MAX_ANSWER: usize = 1 << 30;

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
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    send(stream, addr, method, path, headers, body).await
}

/// Sends one request over the Unix socket `socket` and reads the whole response.
pub async fn request_unix(socket: &std::path::Path, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket).await?;
    send(stream, "localhost", method, path, headers, body).await
}

async fn send<S>(stream: S, host: &str, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> std::io::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| std::io::Error::other(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(err)?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(std::io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(err)?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| std::io::Error::other(format!("reading the answer from {host}: {e} (at most {MAX_ANSWER} bytes)")))?
        .to_bytes();
    Ok(Response { status: parts.status, headers: parts.headers, body })
}
