//! Function output: stdout and stderr read line by line, tagged with function, instance and
//! request id, printed in fcsup's own output (as `s local` shows them), kept in a per-instance
//! ring for the admin API, appended to a per-function log file, and collected per request for
//! `x-fc-log-type: Tail`. fcsup's own lines about an instance (hook markers, cancellations,
//! health verdicts) go to the same places, so one file tells a function's whole story.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

/// Lines kept per instance for `GET /admin/instances/{id}/logs`.
const RING_LINES: usize = 1000;
/// Bytes of log returned with `x-fc-log-type: Tail` (FC returns the last 4 KB).
pub const TAIL_BYTES: usize = 4096;

/// The per-function log files (`<dir>/<function>.log`, appended, never truncated).
#[derive(Debug, Default)]
pub struct LogFiles {
    dir: Option<PathBuf>,
    open: Mutex<HashMap<String, Arc<Mutex<File>>>>,
}

impl LogFiles {
    /// Log files under `dir` (created if missing); `None` keeps logs in memory only.
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(LogFiles { dir, open: Mutex::default() })
    }

    /// The file of `function`, opened once and shared by its instances.
    pub fn for_function(&self, function: &str) -> Option<Arc<Mutex<File>>> {
        let dir = self.dir.as_ref()?;
        let mut open = self.open.lock().expect("log files");
        if let Some(f) = open.get(function) {
            return Some(f.clone());
        }
        let path = dir.join(format!("{function}.log"));
        match File::options().create(true).append(true).open(&path) {
            Ok(f) => {
                let f = Arc::new(Mutex::new(f));
                open.insert(function.to_string(), f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::warn!("cannot open {}: {e}; {function}'s output is kept in memory only", path.display());
                None
            }
        }
    }
}

/// One instance's log state.
#[derive(Debug)]
pub struct InstanceLog {
    function: String,
    instance: String,
    inner: Mutex<Inner>,
    echo: bool,
    file: Option<Arc<Mutex<File>>>,
    /// Duplicates of the output pipes' read ends, to see whether output is still unread.
    pipes: Mutex<Vec<OwnedFd>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Request ids in flight (and the hook running), in arrival order.
    current: Vec<String>,
    ring: VecDeque<String>,
    /// Per-request captured output, for Tail.
    captured: HashMap<String, Vec<u8>>,
}

impl InstanceLog {
    /// A log for one instance; `echo` prints lines to fcsup's stdout, `file` is the
    /// function's log file.
    pub fn new(function: &str, instance: &str, echo: bool, file: Option<Arc<Mutex<File>>>) -> Arc<Self> {
        Arc::new(InstanceLog {
            function: function.into(),
            instance: instance.into(),
            inner: Mutex::default(),
            echo,
            file,
            pipes: Mutex::default(),
        })
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
                unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) == 0 && n > 0 }
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

    /// Ends `request_id` and returns what it printed (last [`TAIL_BYTES`]).
    pub fn end(&self, request_id: &str) -> Vec<u8> {
        let mut g = self.inner.lock().expect("log lock");
        g.current.retain(|r| r != request_id);
        g.captured.remove(request_id).unwrap_or_default()
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
        if g.ring.len() == RING_LINES {
            g.ring.pop_front();
        }
        let stamped = format!("{} {stream} {text}", crate::util::now_rfc3339());
        if let Some(f) = &self.file {
            let _ = writeln!(f.lock().expect("log file"), "{stamped}");
        }
        g.ring.push_back(stamped);
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        }
    }

    /// The instance's recent lines.
    pub fn recent(&self) -> Vec<String> {
        self.inner.lock().expect("log lock").ring.iter().cloned().collect()
    }

    /// Starts readers for the function's stdout and stderr; they end when the pipes close.
    pub fn attach(self: &Arc<Self>, stdout: OwnedFd, stderr: OwnedFd) {
        for (fd, name) in [(stdout, "stdout"), (stderr, "stderr")] {
            let log = self.clone();
            if let Ok(dup) = fd.try_clone() {
                self.pipes.lock().expect("log lock").push(dup);
            }
            let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { continue };
            tokio::spawn(async move {
                let mut lines = BufReader::new(rx).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    log.line(name, &l);
                }
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
        let log = InstanceLog::new("f", "c-1234", false, None);
        log.line("stdout", "before");
        log.begin("r1");
        log.line("stdout", "hello");
        let got = log.end("r1");
        assert_eq!(got, b"hello\n");
        assert!(log.recent()[1].contains("[f/c-1234] r1 hello"), "{:?}", log.recent());
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
