//! Steady load for the cluster's tests and bench: clients on kept-alive connections, each
//! request recorded with when it started and ended, its status (or that it got none) and the
//! node that answered, so failures can be counted against the moment something happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::{Conn, Target};

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Client number.
    pub client: usize,
    /// When it was sent and answered, from [`Load::t0`].
    pub start: Duration,
    pub end: Duration,
    /// Its status; `None` when no answer came (connection refused, reset, timed out).
    pub status: Option<u16>,
    /// `X-Fcsup-Node` of the answer.
    pub node: String,
    /// The error, when no answer came, or the body of an answer that was not 200.
    pub error: String,
}

impl Sample {
    /// A 200 answer.
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Running clients.
#[derive(Debug)]
pub struct Load {
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `clients` clients against `addr`, client `i` POSTing `body` to `paths[i % len]`
    /// and waiting `pause` between its requests.
    pub fn start(addr: &str, paths: &[String], body: &[u8], clients: usize, pause: Duration) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|client| {
                let (stop, path, body, target) = (stop.clone(), paths[client % paths.len()].clone(), body.to_vec(), Target::Tcp(addr.to_string()));
                std::thread::spawn(move || {
                    let mut conn = Conn::new(target, Duration::from_secs(30));
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = t0.elapsed();
                        let (status, node, error) = match conn.request("POST", &path, &[], &body) {
                            Ok(r) => {
                                let error = if r.status == 200 { String::new() } else { String::from_utf8_lossy(&r.body).into_owned() };
                                (Some(r.status), r.header("x-fcsup-node").to_string(), error)
                            }
                            Err(e) => (None, String::new(), e.to_string()),
                        };
                        out.push(Sample { client, start, end: t0.elapsed(), status, node, error });
                        if status.is_none() {
                            // No busy loop while nothing answers.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    out
                })
            })
            .collect();
        Load { t0, stop, threads }
    }

    /// Stops the clients (each finishes its request) and returns every request, by start.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self.threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
        all.sort_by_key(|s| s.start);
        all
    }
}

/// 200 answers per second over the span of `samples`.
pub fn rate(samples: &[Sample]) -> f64 {
    let (Some(first), Some(last)) = (samples.iter().map(|s| s.start).min(), samples.iter().map(|s| s.end).max()) else { return 0.0 };
    let span = (last - first).as_secs_f64();
    if span == 0.0 {
        return 0.0;
    }
    samples.iter().filter(|s| s.ok()).count() as f64 / span
}
