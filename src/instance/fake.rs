//! A recording kernel for unit tests, without root: it records every freeze, thaw, meter
//! reading and signal, and a real HTTP server on loopback plays the function (recording each
//! hook and request in the same log), so the lifecycle's orders are checked as they happen.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::kernel::{Exit, Placement};
use super::*;
use crate::cgroup::{CgroupError, CpuStat, MemoryMeter};
use crate::config::Function;

/// CPU the fake says the function used: on each thaw (its threads resume), each request, and
/// before each freeze completes.
pub const THAW_BURN: u64 = 7;
pub const INVOKE_BURN: u64 = 1000;
pub const FREEZE_BURN: u64 = 30;

/// What happened, in order, to the kernel and to the function.
#[derive(Debug, Default)]
pub struct Trace {
    pub events: Mutex<Vec<String>>,
    pub cpu_usec: AtomicU64,
}

impl Trace {
    fn push(&self, e: &str) {
        self.events.lock().unwrap().push(e.to_string());
    }

    /// The events, without meter readings.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().filter(|e| *e != "read").cloned().collect()
    }

    pub fn count(&self, e: &str) -> usize {
        self.events.lock().unwrap().iter().filter(|x| *x == e).count()
    }

    /// Asserts that `want` happened in this order (other events may come between).
    pub fn assert_order(&self, want: &[&str]) {
        let all = self.events.lock().unwrap().clone();
        let mut at = 0;
        for w in want {
            match all[at..].iter().position(|e| e == w) {
                Some(i) => at += i + 1,
                None => panic!("{want:?} did not happen in this order: {all:?}"),
            }
        }
    }
}

/// How the fake function answers.
#[derive(Debug, Default)]
pub struct Script {
    /// Statuses for successive `POST /initialize` (200 once they run out).
    pub init: Mutex<VecDeque<u16>>,
    /// How long `/initialize` takes.
    pub init_delay: Duration,
    /// How long `/pre-freeze` takes.
    pub pre_freeze_delay: Duration,
    /// How long a request takes.
    pub invoke_delay: Duration,
    /// The process ignores SIGTERM.
    pub ignores_term: bool,
}

#[derive(Debug)]
pub struct Recording {
    trace: Arc<Trace>,
    script: Arc<Script>,
    exit: watch::Sender<Option<Exit>>,
    addr: SocketAddr,
    memory: MemoryMeter,
}

impl Recording {
    pub fn exit_with(&self, status: i32) {
        self.exit.send_if_modified(|e| e.is_none() && e.replace(Exit { status, oom_killed: false }).is_none());
    }
}

impl Kernel for Recording {
    async fn freeze(&self) -> Result<(), CgroupError> {
        self.trace.cpu_usec.fetch_add(FREEZE_BURN, Ordering::SeqCst);
        self.trace.push("freeze");
        Ok(())
    }

    async fn freeze_unless(&self, _cancel: impl std::future::Future<Output = ()> + Send) -> Result<bool, CgroupError> {
        self.freeze().await.map(|()| true)
    }

    async fn thaw(&self) -> Result<(), CgroupError> {
        self.trace.push("thaw");
        self.trace.cpu_usec.fetch_add(THAW_BURN, Ordering::SeqCst);
        Ok(())
    }

    fn cpu(&self) -> CpuStat {
        self.trace.push("read");
        CpuStat { usage_usec: self.trace.cpu_usec.load(Ordering::SeqCst), ..CpuStat::default() }
    }

    fn memory(&self) -> &MemoryMeter {
        &self.memory
    }

    fn terminate(&self) {
        self.trace.push("SIGTERM");
        if !self.script.ignores_term {
            self.exit_with(143);
        }
    }

    async fn kill(&self) -> Result<(), CgroupError> {
        self.trace.push("kill");
        self.exit_with(137);
        Ok(())
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.trace.push("remove");
        Ok(())
    }

    fn exited(&self) -> impl std::future::Future<Output = Exit> + Send + 'static {
        let mut rx = self.exit.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(e) => e.expect("waited for it"),
                Err(_) => Exit { status: -1, oom_killed: false },
            }
        }
    }

    fn try_connect(&self, _port: u16) -> io::Result<Option<TcpStream>> {
        let s = std::net::TcpStream::connect(self.addr)?;
        s.set_nonblocking(true)?;
        Ok(Some(TcpStream::from_std(s)?))
    }

    async fn connect(&self, _port: u16) -> io::Result<TcpStream> {
        TcpStream::connect(self.addr).await
    }

    fn placement(&self) -> Placement {
        Placement { pid: 0, cgroup: String::new(), host_uid: None }
    }

    fn pids(&self) -> Vec<i32> {
        Vec::new()
    }

    fn enter(&self, argv: &[String]) -> Result<super::kernel::Entered, String> {
        self.trace.push("enter");
        Err(format!("the recording kernel runs nothing ({argv:?})"))
    }
}

/// Serves the fake function on loopback: FC's lifecycle paths and `/invoke`.
pub fn function_server(trace: Arc<Trace>, script: Arc<Script>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (trace, script) = (trace.clone(), script.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (trace, script) = (trace.clone(), script.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let status = match (req.method(), path.as_str()) {
                            (&Method::POST, "/initialize") => {
                                trace.push("initialize");
                                tokio::time::sleep(script.init_delay).await;
                                script.init.lock().unwrap().pop_front().unwrap_or(200)
                            }
                            (&Method::POST, "/invoke") => {
                                trace.push("invoke");
                                tokio::time::sleep(script.invoke_delay).await;
                                trace.cpu_usec.fetch_add(INVOKE_BURN, Ordering::SeqCst);
                                trace.push("invoked");
                                200
                            }
                            (&Method::GET, "/pre-freeze") => {
                                trace.push("pre-freeze");
                                tokio::time::sleep(script.pre_freeze_delay).await;
                                trace.push("pre-freeze-done");
                                200
                            }
                            (&Method::GET, "/pre-stop") => {
                                trace.push("pre-stop");
                                200
                            }
                            _ => 404,
                        };
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// The recording kernel for a function playing `script`; its trace.
pub fn recording(script: Script) -> (Recording, Arc<Trace>) {
    let trace = Arc::new(Trace::default());
    let script = Arc::new(script);
    let addr = function_server(trace.clone(), script.clone());
    (Recording { trace: trace.clone(), script, exit: watch::channel(None).0, addr, memory: MemoryMeter::none() }, trace)
}

/// A function with `extra` props (YAML), its code in `code`.
pub fn function(extra: &str, code: &std::path::Path) -> Function {
    let props = format!("runtime: custom.debian10\ncode: .\ncustomRuntimeConfig: {{command: [/bin/true], port: 9000}}\ntimeout: 2\n{extra}");
    crate::config::Config::parse_function(&props, "f", code).unwrap()
}

/// Reporting into an in-memory ledger.
pub fn reporting() -> Arc<Reporting> {
    Arc::new(Reporting::new(Arc::new(crate::billing::Ledger::open(None).unwrap())))
}

/// A request with id `id`.
pub fn call(id: &str) -> Call {
    Call {
        http_trigger: false,
        request_id: id.into(),
        method: Method::POST,
        path_and_query: "/invoke".into(),
        headers: Default::default(),
        body: Bytes::new(),
        want_log: false,
        canceled: None,
        retry_count: 0,
        body_stream: None,
        client_upgrade: None,
        stream: false,
        arrived: Instant::now(),
        body_budget: None,
    }
}

/// Starts instances on recording kernels, each playing the next script (the default one
/// once they run out); their traces in launch order.
#[derive(Debug, Default)]
pub struct FakeLauncher {
    pub scripts: Mutex<VecDeque<Script>>,
    pub launched: Mutex<Vec<(String, Arc<Trace>)>>,
    pub reporting: Option<Arc<Reporting>>,
}

impl Launch<Recording> for FakeLauncher {
    fn launch(&self, function: Arc<Function>, provisioned: bool, _call: Option<&super::Call>) -> Result<Arc<Instance<Recording>>, StartError> {
        let script = self.scripts.lock().unwrap().pop_front().unwrap_or_default();
        let (kernel, trace) = recording(script);
        let id = format!("c-{}", self.launched.lock().unwrap().len());
        self.launched.lock().unwrap().push((id.clone(), trace));
        let log = crate::logs::InstanceLog::new(&function.name, &id, None, None);
        let spawned = Spawned { id, kernel, log, created: Instant::now(), start_trace: StartTrace::default(), runtime_api: None };
        Ok(Instance::new(function, spawned, self.reporting.clone().unwrap_or_else(reporting), provisioned))
    }
}
