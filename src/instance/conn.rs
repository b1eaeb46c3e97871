//! Kept-alive HTTP/1.1 connections into one instance.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Kernel;

/// A sender for one connection.
pub type Sender = SendRequest<Full<Bytes>>;

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
    idle: Mutex<Vec<Sender>>,
}

impl Connections {
    /// Connections to the instance's `port`.
    pub fn new(port: u16) -> Self {
        Connections { port, idle: Mutex::new(Vec::new()) }
    }

    /// Makes `stream` an HTTP/1.1 connection.
    pub async fn handshake(stream: TcpStream) -> hyper::Result<Sender> {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
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
        let resp = s.send_request(req).await?;
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
