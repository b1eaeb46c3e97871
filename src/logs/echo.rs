//! Function output printed in fcsup's own stdout. One thread of its own writes it, fed
//! through a bounded queue, so a slow or blocked reader of fcsup's stdout never stalls the
//! readers of the functions' pipes (and through them the functions). Each function may print
//! at most `rate` lines a second; lines beyond that, or that find the queue full, are dropped
//! and counted, and the count is printed once printing resumes (`[f] N lines dropped (rate
//! limit)`). The log files, the per-instance ring and Tail get every line regardless.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Lines waiting for the writer thread (each at most a split line plus its tag).
const QUEUE: usize = 512;
/// The rate limit's window.
const WINDOW: Duration = Duration::from_secs(1);

type Functions = Mutex<HashMap<String, Arc<FunctionEcho>>>;

/// The printer of function output.
#[derive(Debug)]
pub struct Echo {
    functions: Arc<Functions>,
    tx: SyncSender<String>,
    queued: Arc<AtomicUsize>,
    rate: u32,
}

impl Echo {
    /// Starts the writer thread; each function may print `rate` lines a second (at least 1).
    pub fn start(rate: u32) -> Arc<Echo> {
        let (tx, rx) = sync_channel(QUEUE);
        let functions: Arc<Functions> = Arc::default();
        let queued = Arc::new(AtomicUsize::new(0));
        let (f, q) = (Arc::downgrade(&functions), queued.clone());
        let spawned = std::thread::Builder::new().name("fcsup-echo".into()).spawn(move || writer(rx, f, q));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the output thread ({e}); function output is not printed");
        }
        Arc::new(Echo { functions, tx, queued, rate: rate.max(1) })
    }

    /// The rate-limited printer of `function`, shared by its instances.
    pub fn for_function(&self, function: &str) -> Arc<FunctionEcho> {
        let mut m = self.functions.lock().expect("echo");
        m.entry(function.to_string())
            .or_insert_with(|| {
                Arc::new(FunctionEcho {
                    function: function.to_string(),
                    rate: self.rate,
                    tx: self.tx.clone(),
                    queued: self.queued.clone(),
                    window: Mutex::new(Window { started: Instant::now(), printed: 0, dropped: Dropped::default() }),
                })
            })
            .clone()
    }

    /// Waits (up to `limit`) until every queued line is written: called at shutdown, so the
    /// last lines are not lost when the process exits.
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.queued.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// One function's rate limit.
#[derive(Debug)]
pub struct FunctionEcho {
    function: String,
    rate: u32,
    tx: SyncSender<String>,
    queued: Arc<AtomicUsize>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    printed: u32,
    dropped: Dropped,
}

#[derive(Debug, Default, Clone, Copy)]
struct Dropped {
    rate: u64,
    blocked: u64,
}

impl FunctionEcho {
    /// Prints `line` unless the function is over its rate or the queue is full.
    pub fn print(&self, line: String) {
        let mut w = self.window.lock().expect("echo");
        let now = Instant::now();
        if now.duration_since(w.started) >= WINDOW {
            w.started = now;
            w.printed = 0;
        }
        if w.printed >= self.rate {
            w.dropped.rate += 1;
            return;
        }
        w.printed += 1;
        self.report(&mut w);
        if !self.send(line) {
            w.dropped.blocked += 1;
        }
    }

    /// Prints the drop counts, if any, once the window they were counted in has passed.
    fn report_if_over(&self) {
        let mut w = self.window.lock().expect("echo");
        if Instant::now().duration_since(w.started) >= WINDOW {
            self.report(&mut w);
        }
    }

    fn report(&self, w: &mut Window) {
        let d = w.dropped;
        if d.rate > 0 && self.send(format!("[{}] {} lines dropped (rate limit)", self.function, d.rate)) {
            w.dropped.rate = 0;
        }
        if d.blocked > 0 && self.send(format!("[{}] {} lines dropped (fcsup's output blocked)", self.function, d.blocked)) {
            w.dropped.blocked = 0;
        }
    }

    fn send(&self, line: String) -> bool {
        self.queued.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }
}

/// The writer thread: prints queued lines in batches, and every window prints the counts of
/// functions whose output stopped while over their rate. Ends when every sender is gone.
fn writer(rx: Receiver<String>, functions: Weak<Functions>, queued: Arc<AtomicUsize>) {
    let mut swept = Instant::now();
    let mut batch = String::new();
    loop {
        match rx.recv_timeout(WINDOW / 4) {
            Ok(line) => {
                batch.clear();
                let mut n = 1;
                batch.push_str(&line);
                batch.push('\n');
                while let Ok(line) = rx.try_recv() {
                    batch.push_str(&line);
                    batch.push('\n');
                    n += 1;
                    if batch.len() > 256 << 10 {
                        break;
                    }
                }
                let _ = std::io::stdout().lock().write_all(batch.as_bytes());
                queued.fetch_sub(n, Ordering::AcqRel);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if swept.elapsed() >= WINDOW {
            swept = Instant::now();
            let Some(functions) = functions.upgrade() else { continue };
            let all: Vec<Arc<FunctionEcho>> = functions.lock().expect("echo").values().cloned().collect();
            for f in all {
                f.report_if_over();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_rate_are_counted_and_the_count_printed_on_resuming() {
        let (tx, rx) = sync_channel(QUEUE);
        let f = FunctionEcho {
            function: "f".into(),
            rate: 3,
            tx,
            queued: Arc::default(),
            window: Mutex::new(Window { started: Instant::now(), printed: 0, dropped: Dropped::default() }),
        };
        for i in 0..10 {
            f.print(format!("line {i}"));
        }
        f.window.lock().unwrap().started -= WINDOW;
        f.print("later".into());
        let got: Vec<String> = rx.try_iter().collect();
        assert_eq!(got, ["line 0", "line 1", "line 2", "[f] 7 lines dropped (rate limit)", "later"]);
    }
}
