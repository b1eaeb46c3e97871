//! Function output: stdout and stderr split into lines (at most [`MAX_LINE`] bytes), tagged with function, instance and
//! request id, printed in fcsup's own output (as `s local` shows them), kept in a per-instance
//! ring for the admin API, appended to a per-function log file (rotated by size), and collected
//! per request for `x-fc-log-type: Tail`. Memory for an instance's output is bounded: two
//! read buffers, the ring, and the last few KB per request in flight. fcsup's own lines about an instance (hook markers, cancellations,
//! health verdicts) go to the same places, so one file tells a function's whole story.

mod echo;
mod file;
mod split;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

/// nix's macro makes its wrappers public: kept in a private module.
mod ioctl {
    nix::ioctl_read_bad!(
        /// `ioctl(fd, FIONREAD, &n)`: bytes waiting in a pipe.
        fionread,
        libc::FIONREAD,
        libc::c_int
    );
}
use ioctl::fionread;

pub use echo::{Echo, FunctionEcho};
pub use file::{parse_size, LogFile, LogFiles, Rotation};
pub use split::MAX_LINE;

/// Lines kept per instance for `GET /admin/instances/{id}/logs`...
const RING_LINES: usize = 1000;
/// ... and at most this many bytes of them.
const RING_BYTES: usize = 1 << 20;
/// Bytes of log returned with `x-fc-log-type: Tail` (FC returns the last 4 KB).
pub const TAIL_BYTES: usize = 4096;
/// Appended to a piece of a line longer than [`MAX_LINE`] whose rest follows in the next one.
pub const CONTINUES: &str = " [line continues]";

/// One instance's log state.
#[derive(Debug)]
pub struct InstanceLog {
    function: String,
    instance: String,
    inner: Mutex<Inner>,
    echo: Option<Arc<FunctionEcho>>,
    file: Option<Arc<Mutex<LogFile>>>,
    /// Duplicates of the output pipes' read ends, to see whether output is still unread.
    pipes: Mutex<Vec<OwnedFd>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Request ids in flight (and the hook running), in arrival order.
    current: Vec<String>,
    ring: VecDeque<String>,
    /// Bytes in `ring`.
    ring_bytes: usize,
    /// Per-request captured output, for Tail.
    captured: HashMap<String, Vec<u8>>,
}

impl InstanceLog {
    /// A log for one instance; `echo` prints lines in fcsup's stdout, `file` is the
    /// function's log file.
    pub fn new(function: &str, instance: &str, echo: Option<Arc<FunctionEcho>>, file: Option<Arc<Mutex<LogFile>>>) -> Arc<Self> {
        Arc::new(InstanceLog { function: function.into(), instance: instance.into(), inner: Mutex::default(), echo, file, pipes: Mutex::default() })
    }

    /// Marks `request_id` as running: lines printed from now on are tagged with it.
    pub fn begin(&self, request_id: &str) {
        let mut g = self.inner.lock().expect("log lock");
        g.current.push(request_id.to_string());
        g.captured.insert(request_id.to_string(), Vec::new());
    }

    /// Waits (up to 5 ms) until the readers have taken everything the function has written so
    /// far: output printed before a response must count as that request's.
    pub async fn drain(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(5);
        loop {
            let pending = self.pipes.lock().expect("log lock").iter().any(|fd| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD on a pipe fd we own; writes one c_int.
                unsafe { fionread(fd.as_raw_fd(), &mut n) }.is_ok() && n > 0
            });
            if !pending || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
        }
        // Let the readers hand on lines they already hold in their buffers.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    /// Bytes the function wrote to stdout and stderr that the readers have not taken yet.
    pub fn unread(&self) -> usize {
        self.pipes
            .lock()
            .expect("log lock")
            .iter()
            .map(|fd| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD on a pipe fd we own; writes one c_int.
                if unsafe { fionread(fd.as_raw_fd(), &mut n) }.is_ok() {
                    usize::try_from(n).unwrap_or(0)
                } else {
                    0
                }
            })
            .sum()
    }

    /// Ends `request_id` and returns what it printed (last [`TAIL_BYTES`]).
    pub fn end(&self, request_id: &str) -> Vec<u8> {
        let mut g = self.inner.lock().expect("log lock");
        g.current.retain(|r| r != request_id);
        g.captured.remove(request_id).unwrap_or_default()
    }

    /// Records one piece of output as read from a pipe (see [`split`]): invalid UTF-8 is
    /// replaced, and a piece whose line goes on gets [`CONTINUES`].
    fn piece(&self, stream: &str, bytes: &[u8], continues: bool) {
        let text = String::from_utf8_lossy(bytes);
        if continues {
            self.line(stream, &format!("{text}{CONTINUES}"));
        } else {
            self.line(stream, &text);
        }
    }

    /// Records one line written by the function.
    pub fn line(&self, stream: &str, line: &str) {
        let mut g = self.inner.lock().expect("log lock");
        // With one request in flight the line is surely its; with several FC cannot tell either,
        // so the line goes to every one of them.
        let tag = match g.current.len() {
            0 => String::new(),
            1 => g.current[0].clone(),
            _ => g.current.join(","),
        };
        for r in g.current.clone() {
            if let Some(buf) = g.captured.get_mut(&r) {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                if buf.len() > 2 * TAIL_BYTES {
                    buf.drain(..buf.len() - TAIL_BYTES);
                }
            }
        }
        self.keep(&mut g, stream, &tag, line);
    }

    /// Records a line of fcsup's own about this instance: kept and echoed like the function's
    /// output, never captured as a request's.
    pub fn note(&self, line: &str) {
        let mut g = self.inner.lock().expect("log lock");
        self.keep(&mut g, "fcsup", "", line);
    }

    fn keep(&self, g: &mut Inner, stream: &str, tag: &str, line: &str) {
        let short = &self.instance[..self.instance.len().min(12)];
        let text = format!("[{}/{}]{}{} {}", self.function, short, if tag.is_empty() { "" } else { " " }, tag, line);
        let stamped = format!("{} {stream} {text}", crate::clock::now_rfc3339());
        if let Some(f) = &self.file {
            f.lock().expect("log file").write_line(&stamped);
        }
        while !g.ring.is_empty() && (g.ring.len() == RING_LINES || g.ring_bytes + stamped.len() > RING_BYTES) {
            g.ring_bytes -= g.ring.pop_front().map_or(0, |l| l.len());
        }
        g.ring_bytes += stamped.len();
        g.ring.push_back(stamped);
        if let Some(echo) = &self.echo {
            echo.print(text);
        }
    }

    /// The instance's recent lines.
    pub fn recent(&self) -> Vec<String> {
        self.inner.lock().expect("log lock").ring.iter().cloned().collect()
    }

    /// Starts readers for the function's stdout and stderr; they end when the pipes close.
    /// Each keeps one fixed buffer and hands on lines as they come, so neither a line without
    /// end nor a slow stdout of fcsup's holds up the function.
    pub fn attach(self: &Arc<Self>, stdout: OwnedFd, stderr: OwnedFd) {
        for (fd, name) in [(stdout, "stdout"), (stderr, "stderr")] {
            let log = self.clone();
            if let Ok(dup) = fd.try_clone() {
                self.pipes.lock().expect("log lock").push(dup);
            }
            let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { continue };
            tokio::spawn(async move {
                let mut sp = split::Splitter::default();
                loop {
                    match rx.read_buf(sp.buf()).await {
                        Ok(0) => break,
                        Ok(_) => sp.split(|b, c| log.piece(name, b, c)),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                sp.finish(|b, c| log.piece(name, b, c));
            });
        }
    }
}

/// The last [`TAIL_BYTES`] of `captured`, cut at a line start, between FC's markers.
pub fn tail(request_id: &str, captured: &[u8], summary: &str) -> Vec<u8> {
    // A custom runtime may print FC's markers itself; they are not repeated.
    let has = |m: &str| captured.windows(m.len()).any(|w| w == m.as_bytes());
    let start = format!("FC Invoke Start RequestId: {request_id}");
    let stop = format!("FC Invoke End RequestId: {request_id}");
    let mut out = if has(&start) { Vec::new() } else { format!("{start}\n").into_bytes() };
    let end = if has(&stop) { format!("\n{summary}\n") } else { format!("{stop}\n\n{summary}\n") }.into_bytes();
    let room = TAIL_BYTES.saturating_sub(out.len() + end.len());
    let mut body = &captured[captured.len().saturating_sub(room)..];
    if body.len() < captured.len() {
        if let Some(nl) = body.iter().position(|b| *b == b'\n') {
            body = &body[nl + 1..];
        }
    }
    out.extend_from_slice(body);
    out.extend_from_slice(&end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_the_running_request() {
        let log = InstanceLog::new("f", "c-1234", None, None);
        log.line("stdout", "before");
        log.begin("r1");
        log.line("stdout", "hello");
        let got = log.end("r1");
        assert_eq!(got, b"hello\n");
        assert!(log.recent()[1].contains("[f/c-1234] r1 hello"), "{:?}", log.recent());
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_and_cut_lines_are_marked() {
        let log = InstanceLog::new("f", "c-1", None, None);
        for _ in 0..200 {
            log.line("stdout", &"x".repeat(MAX_LINE));
        }
        assert!(log.recent().iter().map(String::len).sum::<usize>() <= RING_BYTES);
        log.piece("stdout", b"abc", true);
        assert!(log.recent().last().unwrap().ends_with(&format!("abc{CONTINUES}")));
    }

    #[test]
    fn tail_is_bounded_and_marked() {
        let big: Vec<u8> = (0..1000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let t = tail("r", &big, "Duration: 1.00 ms");
        assert!(t.len() <= TAIL_BYTES);
        let s = String::from_utf8(t).unwrap();
        assert!(s.starts_with("FC Invoke Start RequestId: r\nline "));
        assert!(s.ends_with("FC Invoke End RequestId: r\n\nDuration: 1.00 ms\n"));
        assert!(s.contains("line 999\n"));
    }
}
