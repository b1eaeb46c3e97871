//! Kept-alive HTTP/1.1 connections into one instance.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Kernel;

/// A sender for one connection.
pub type Sender = SendRequest<ReqBody>;

/// A request body into the instance: whole, or the client's, passed on as it arrives.
#[derive(Debug)]
pub enum ReqBody {
    /// In memory.
    Full(Full<Bytes>),
    /// Streamed from the client.
    Stream(ClientBody),
}

impl From<Full<Bytes>> for ReqBody {
    fn from(f: Full<Bytes>) -> Self {
        ReqBody::Full(f)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|e| match e {}),
            ReqBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(f) => f.is_end_stream(),
            ReqBody::Stream(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(f) => f.size_hint(),
            ReqBody::Stream(s) => s.body.size_hint(),
        }
    }
}

/// How a streamed request body fared, seen by the request after its connection failed:
/// the client's fault is not the instance's.
#[derive(Debug, Clone, Default)]
pub struct BodyFate(Arc<AtomicU8>);

impl BodyFate {
    const CLIENT_FAILED: u8 = 1;
    const TOO_LARGE: u8 = 2;

    /// The client's connection failed while it sent the body.
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::CLIENT_FAILED
    }

    /// The body grew past its limit.
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }
}

/// The client's request body, passed on frame by frame (hyper reads the next only when the
/// instance took this one, so nothing piles up in fcsup), at most `limit` bytes.
#[derive(Debug)]
pub struct ClientBody {
    body: Incoming,
    left: usize,
    fate: BodyFate,
}

impl ClientBody {
    /// `body`, cut off (and the request failed) past `limit` bytes.
    pub fn new(body: Incoming, limit: usize) -> (Self, BodyFate) {
        let fate = BodyFate::default();
        (ClientBody { body, left: limit, fate: fate.clone() }, fate)
    }

    /// How the body fares.
    pub fn fate(&self) -> BodyFate {
        self.fate.clone()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.fate.0.store(BodyFate::CLIENT_FAILED, Ordering::Relaxed);
                return Poll::Ready(Some(Err(e.into())));
            }
            other => other,
        };
        if let Poll::Ready(Some(Ok(f))) = &frame {
            let n = f.data_ref().map_or(0, Bytes::len);
            if n > self.left {
                self.fate.0.store(BodyFate::TOO_LARGE, Ordering::Relaxed);
                return Poll::Ready(Some(Err("request body over its limit".into())));
            }
            self.left -= n;
        }
        frame.map(|o| o.map(|r| r.map_err(Into::into)))
    }
}

/// Why a request could not be sent into the instance.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Nothing accepted the connection.
    #[error("connect to port {port}: {source}")]
    Connect {
        /// The function's port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The connection was accepted but HTTP did not start.
    #[error("HTTP handshake on port {port}: {source}")]
    Handshake {
        /// The function's port.
        port: u16,
        /// Why.
        source: hyper::Error,
    },
    /// The request or its answer failed on the connection.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The answer's body failed.
    #[error("reading the answer: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// The idle connections of one instance, and how to dial a new one.
#[derive(Debug)]
pub struct Connections {
    port: u16,
    /// `127.0.0.1:port`, the `Host` requests into the instance carry (built once).
    host: hyper::header::HeaderValue,
    idle: Mutex<Vec<Sender>>,
}

impl Connections {
    /// Connections to the instance's `port`.
    pub fn new(port: u16) -> Self {
        let host = hyper::header::HeaderValue::from_str(&format!("127.0.0.1:{port}")).expect("an address is a header value");
        Connections { port, host, idle: Mutex::new(Vec::new()) }
    }

    /// The `Host` of requests into the instance.
    pub fn host(&self) -> hyper::header::HeaderValue {
        self.host.clone()
    }

    /// Makes `stream` an HTTP/1.1 connection.
    pub async fn handshake(stream: TcpStream) -> hyper::Result<Sender> {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        // With upgrades: a WebSocket's 101 hands the connection over (hyper::upgrade::on).
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// An idle connection, or a new one.
    pub async fn take(&self, kernel: &impl Kernel) -> Result<Sender, ConnError> {
        loop {
            let s = self.idle.lock().expect("conn lock").pop();
            match s {
                Some(s) if !s.is_closed() && s.is_ready() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let port = self.port;
        let stream = kernel.connect(port).await.map_err(|source| ConnError::Connect { port, source })?;
        Self::handshake(stream).await.map_err(|source| ConnError::Handshake { port, source })
    }

    /// Sends a bodyless request (hooks, health checks) on a kept-alive connection; the status.
    pub async fn status_of(&self, kernel: &impl Kernel, req: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, ConnError> {
        use http_body_util::BodyExt;
        let mut s = self.take(kernel).await?;
        let resp = s.send_request(req.map(ReqBody::Full)).await?;
        let status = resp.status();
        // Hooks and health checks answer with a status; a body past a few KB is not read, and
        // the connection is dropped rather than reused.
        if http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.is_ok() {
            self.put(s);
        }
        Ok(status)
    }

    /// Returns a connection for reuse.
    pub fn put(&self, s: Sender) {
        if !s.is_closed() {
            self.idle.lock().expect("conn lock").push(s);
        }
    }

    /// Drops every idle connection.
    pub fn clear(&self) {
        self.idle.lock().expect("conn lock").clear();
    }
}
