//! A small blocking HTTP/1.1 client (the soak's and the cluster's) with kept-alive connections over TCP or a Unix socket:
//! the soak must see every answer (or its absence) itself, so no pooling library hides a retry.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, k: &str) -> &str {
        self.headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.as_str()).unwrap_or("")
    }
}

/// A connection that is reopened when the server closed it between requests.
#[derive(Debug)]
pub struct Conn {
    target: Target,
    timeout: Duration,
    stream: Option<BufReader<Stream>>,
    /// Requests re-sent because a kept-alive connection was found closed before any answer
    /// byte arrived (what every HTTP client does; counted so it cannot hide losses).
    pub resent: u64,
}

/// Whether a failure happened before the server could have answered on a reused connection.
struct Failure {
    before_answer: bool,
    err: io::Error,
}

fn fail(before_answer: bool) -> impl Fn(io::Error) -> Failure {
    move |err| Failure { before_answer, err }
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Conn {
        Conn { target, timeout, stream: None, resent: 0 }
    }

    fn open(&self) -> io::Result<BufReader<Stream>> {
        let s = match &self.target {
            Target::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Stream::Tcp(s)
            }
            Target::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Stream::Unix(s)
            }
        };
        Ok(BufReader::new(s))
    }

    /// Sends one request and reads its answer.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Resp> {
        let reused = self.stream.is_some();
        match self.once(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(f) if reused && f.before_answer => {
                self.stream = None;
                self.resent += 1;
                self.once(method, path, headers, body).map_err(|f| {
                    self.stream = None;
                    f.err
                })
            }
            Err(f) => {
                self.stream = None;
                Err(f.err)
            }
        }
    }

    fn once(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Resp, Failure> {
        if self.stream.is_none() {
            self.stream = Some(self.open().map_err(fail(false))?);
        }
        let s = self.stream.as_mut().expect("stream");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut buf = req.into_bytes();
        buf.extend_from_slice(body);
        s.get_mut().write_all(&buf).map_err(fail(true))?;
        let mut line = String::new();
        match s.read_line(&mut line) {
            Ok(0) => return Err(Failure { before_answer: true, err: io::Error::new(io::ErrorKind::UnexpectedEof, "closed before an answer") }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(fail(true)(e)),
            Err(e) => return Err(fail(false)(e)),
            Ok(_) => {}
        }
        let bad = |what: &str| Failure { before_answer: false, err: io::Error::new(io::ErrorKind::InvalidData, what.to_string()) };
        let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad("bad status line"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if s.read_line(&mut h).map_err(fail(false))? == 0 {
                return Err(bad("closed in the headers"));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut out = Vec::new();
            loop {
                let mut n = String::new();
                s.read_line(&mut n).map_err(fail(false))?;
                let n = usize::from_str_radix(n.trim(), 16).map_err(|_| bad("bad chunk size"))?;
                let mut chunk = vec![0u8; n + 2];
                s.read_exact(&mut chunk).map_err(fail(false))?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
            out
        } else {
            let n: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut b = vec![0u8; n];
            s.read_exact(&mut b).map_err(fail(false))?;
            b
        };
        if get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.stream = None;
        }
        Ok(Resp { status, headers, body })
    }
}
