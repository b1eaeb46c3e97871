//! The two phases of load: instance lifecycles (cold start, invoke, PreStop, stop) and many
//! concurrent clients whose every answer must echo their own token.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xtask::http::{Conn, Resp, Target};

/// Answer timeout of one request: above the functions' 10 s timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin endpoints: over fcsup's Unix socket when it has one, else its TCP address.
#[derive(Clone)]
pub struct Admin {
    pub sock: PathBuf,
    pub tcp: String,
}

impl Admin {
    pub fn target(&self) -> Target {
        if self.sock.exists() {
            Target::Unix(self.sock.clone())
        } else {
            Target::Tcp(self.tcp.clone())
        }
    }

    /// Which way the admin calls go, for the report.
    pub fn via(&self) -> String {
        match self.target() {
            Target::Unix(p) => format!("unix:{}", p.display()),
            Target::Tcp(a) => format!("tcp:{a}"),
        }
    }

    pub fn call(&self, method: &str, path: &str) -> std::io::Result<Resp> {
        Conn::new(self.target(), REQUEST_TIMEOUT).request(method, path, &[("Connection", "close")], b"")
    }

    /// Pids of the instances fcsup lists now.
    pub fn instance_pids(&self) -> Vec<u32> {
        let Ok(r) = self.call("GET", "/admin/instances") else { return Vec::new() };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v.as_array().into_iter().flatten().filter_map(|i| i["pid"].as_u64().and_then(|p| u32::try_from(p).ok())).collect()
    }
}

fn invoke_path(f: &str) -> String {
    format!("/2023-03-30/functions/{f}/invocations")
}

/// How an answer went wrong, as `status/x-fc-error-type`.
fn error_key(r: &Resp) -> Option<String> {
    let et = r.header("x-fc-error-type");
    (r.status != 200 || !et.is_empty()).then(|| format!("{}/{}", r.status, if et.is_empty() { "-" } else { et }))
}

/// Phase A's outcome.
#[derive(Debug, Default)]
pub struct Lifecycles {
    pub asked: u64,
    pub done: u64,
    /// Failures by kind (an error answer, a warm answer where a cold start was due, a
    /// failed reclaim, no answer).
    pub failures: BTreeMap<String, u64>,
    /// Distinct instance ids the invocations reported.
    pub instance_ids: HashSet<String>,
    pub secs: f64,
}

/// Runs `n` lifecycles over `functions` in parallel (one worker per function, each
/// invoke + reclaim in turn), stopping at `deadline`; `progress` counts finished ones.
pub fn lifecycles(invoke: &Target, admin: &Admin, functions: &[String], n: u64, deadline: Instant, progress: &AtomicU64) -> Lifecycles {
    let t0 = Instant::now();
    let out = Mutex::new(Lifecycles { asked: n, ..Lifecycles::default() });
    let p = functions.len() as u64;
    std::thread::scope(|s| {
        for (w, f) in functions.iter().enumerate() {
            let count = n / p + u64::from((w as u64) < n % p);
            let out = &out;
            s.spawn(move || {
                let mut conn = Conn::new(invoke.clone(), REQUEST_TIMEOUT);
                let fail = |k: String| *out.lock().expect("out").failures.entry(k).or_default() += 1;
                for _ in 0..count {
                    if Instant::now() > deadline {
                        fail("not run: phase deadline".into());
                        continue;
                    }
                    match conn.request("POST", &invoke_path(f), &[], b"{}") {
                        Ok(r) => {
                            if let Some(k) = error_key(&r) {
                                fail(format!("invoke {k}"));
                            } else if r.header("x-fcsup-cold-start") != "true" {
                                fail("invoke: not a cold start".into());
                            }
                            let id = r.header("x-fc-instance-id").to_string();
                            if !id.is_empty() {
                                out.lock().expect("out").instance_ids.insert(id);
                            }
                        }
                        Err(e) => fail(format!("invoke: no answer ({})", e.kind())),
                    }
                    match admin.call("POST", &format!("/admin/functions/{f}/reclaim")) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => fail(format!("reclaim {}", r.status)),
                        Err(e) => fail(format!("reclaim: no answer ({})", e.kind())),
                    }
                    out.lock().expect("out").done += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut out = out.into_inner().expect("out");
    out.secs = t0.elapsed().as_secs_f64();
    out
}

/// Phase B's outcome.
#[derive(Debug, Default)]
pub struct Echoes {
    pub requests: u64,
    pub ok: u64,
    /// Error answers by `status/x-fc-error-type`.
    pub errors: BTreeMap<String, u64>,
    /// Requests with no answer (connection failed, timed out, or a broken answer).
    pub lost: u64,
    /// 200 answers whose body is not the request's own token.
    pub misrouted: u64,
    /// Requests re-sent on a fresh connection (kept-alive one found closed).
    pub resent: u64,
    /// Per function: requests, ok.
    pub per_function: BTreeMap<String, (u64, u64)>,
    pub secs: f64,
    /// Latency of answered requests, µs, p50/p99/max.
    pub latency_us: (u64, u64, u64),
}

/// `clients` clients (client i on `functions[i % len]`), each sending one request at a time
/// on its kept-alive connection until `until` (or `max_per_client` requests).
pub fn echoes(invoke: &Target, functions: &[String], clients: usize, until: Instant, max_per_client: u64) -> Echoes {
    let t0 = Instant::now();
    let out = Mutex::new(Echoes::default());
    let lat = Mutex::new(Vec::<u32>::new());
    let nonce = u64::from(std::process::id()) ^ u64::from(t0.elapsed().subsec_nanos()) ^ 0x5eed;
    std::thread::scope(|s| {
        for c in 0..clients {
            let (out, lat) = (&out, &lat);
            let f = &functions[c % functions.len()];
            s.spawn(move || {
                let mut conn = Conn::new(invoke.clone(), REQUEST_TIMEOUT);
                let mut mine = Echoes::default();
                let mut my_lat = Vec::new();
                let mut seq = 0u64;
                while Instant::now() < until && seq < max_per_client {
                    seq += 1;
                    let token = format!("echo:{f}/c{c}/{seq}/{nonce:x}");
                    mine.requests += 1;
                    let t = Instant::now();
                    match conn.request("POST", &invoke_path(f), &[], token.as_bytes()) {
                        Ok(r) => {
                            if let Some(k) = error_key(&r) {
                                *mine.errors.entry(k).or_default() += 1;
                            } else if r.body != token.as_bytes() {
                                mine.misrouted += 1;
                            } else {
                                mine.ok += 1;
                                my_lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            }
                        }
                        Err(_) => mine.lost += 1,
                    }
                }
                mine.resent = conn.resent;
                let mut o = out.lock().expect("out");
                o.requests += mine.requests;
                o.ok += mine.ok;
                o.lost += mine.lost;
                o.misrouted += mine.misrouted;
                o.resent += mine.resent;
                for (k, v) in mine.errors {
                    *o.errors.entry(k).or_default() += v;
                }
                let e = o.per_function.entry(f.clone()).or_default();
                e.0 += mine.requests;
                e.1 += mine.ok;
                lat.lock().expect("lat").extend(my_lat);
            });
        }
    });
    let mut out = out.into_inner().expect("out");
    out.secs = t0.elapsed().as_secs_f64();
    let mut l = lat.into_inner().expect("lat");
    l.sort_unstable();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "p is in 0..=1: an index into l")]
    let q = |p: f64| u64::from(l.get(((l.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0));
    out.latency_us = (q(0.5), q(0.99), q(1.0));
    out
}
