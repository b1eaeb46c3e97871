//! A blocking HTTP/1.1 client on one kept-alive connection: what the bench measures with, so
//! every system is driven the same way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A response.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `x-fc-instance-id`, when present.
    pub instance: String,
}

impl Conn {
    /// Connects to `addr`.
    pub fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Connects, retrying 50 µs × 1.5 apart (at most 5 ms; fcsup's own readiness schedule)
    /// until `deadline`: how a cold start's "port accepting" is seen.
    pub fn open_when_ready(addr: &str, deadline: Instant) -> std::io::Result<Conn> {
        let mut backoff = Duration::from_micros(50);
        loop {
            match Conn::open(addr) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 3 / 2).min(Duration::from_millis(5));
                }
            }
        }
    }

    /// POSTs `body` to `path` and reads the whole answer.
    pub fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Answer> {
        let head = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n", body.len());
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.writer.write_all(&req)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut instance) = (0usize, String::new());
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("x-fc-instance-id") {
                    instance = v.trim().to_string();
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(Answer { status, instance })
    }
}
