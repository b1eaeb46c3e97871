//! Kept-alive HTTP/1.1 connections into one instance's network namespace.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use crate::sandbox::Netns;

/// A sender for one connection.
pub type Sender = SendRequest<Full<Bytes>>;

/// The idle connections of one instance, and how to dial a new one.
#[derive(Debug)]
pub struct Connections {
    port: u16,
    idle: Mutex<Vec<Sender>>,
}

impl Connections {
    /// Connections to the instance's address and `port` inside its namespace.
    pub fn new(port: u16) -> Self {
        Connections { port, idle: Mutex::new(Vec::new()) }
    }

    /// Connects once (a TCP connect, as FC's readiness check does).
    pub async fn connect(&self, netns: &Netns) -> std::io::Result<TcpStream> {
        let sock = TcpSocket::from_std_stream(netns.socket()?);
        let stream = sock.connect(SocketAddr::from((crate::sandbox::INSTANCE_ADDR, self.port))).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
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
    pub async fn take(&self, netns: &Netns) -> Result<Sender, String> {
        loop {
            let s = self.idle.lock().expect("conn lock").pop();
            match s {
                Some(s) if !s.is_closed() && s.is_ready() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = self.connect(netns).await.map_err(|e| format!("connect to port {}: {e}", self.port))?;
        Self::handshake(stream).await.map_err(|e| format!("HTTP handshake on port {}: {e}", self.port))
    }

    /// Sends a bodyless request (hooks, health checks) on a kept-alive connection; the status.
    pub async fn status_of(&self, netns: &Netns, req: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String> {
        use http_body_util::BodyExt;
        let mut s = self.take(netns).await?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
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
