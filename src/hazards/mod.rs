//! Freeze hazards (README, Freeze hazards): what was still in progress inside an instance when
//! it froze, read from the kernel after the freeze is confirmed (off the response path), not
//! from the function's cooperation: threads caught running, sockets with data queued or a
//! handshake under way, child processes started since the last freeze, output not yet
//! collected; and, from fcsup's own Python and Node.js agents, pending asyncio tasks and
//! timers / Node.js timers and handles.
//!
//! The instance's shell ([`crate::instance`]) runs [`gather`] on a blocking thread once the
//! freeze is confirmed and keeps the reports in a [`Tracker`]; nothing is read before the
//! freeze (the CPU used since the response comes from the cgroup readings that the request's
//! accounting and the billing window take anyway).

pub mod procfs;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Reports kept per instance for `GET /admin/instances/{id}/hazards`.
pub const KEPT: usize = 100;
/// Runtime-reported entries taken from one answer (an agent's list is bounded too).
pub const MAX_PENDING: usize = 32;

/// What kind of work the freeze cut off (the `kind` label of `fcsup_freeze_hazards_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A thread in user mode (running or runnable) when frozen.
    Thread,
    /// A socket with bytes queued to send, not yet acknowledged.
    Socket,
    /// A TCP connection in the middle of its handshake.
    Connecting,
    /// A process started since the last freeze, still there.
    Child,
    /// Output written to stdout/stderr that fcsup had not collected yet.
    Output,
    /// What a built-in runtime's agent reported pending (asyncio tasks, timers, handles).
    Runtime,
}

impl Kind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Thread => "thread",
            Kind::Socket => "socket",
            Kind::Connecting => "connecting",
            Kind::Child => "child",
            Kind::Output => "output",
            Kind::Runtime => "runtime",
        }
    }
}

/// One thing the freeze cut off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hazard {
    /// Its kind.
    pub kind: Kind,
    /// What, in words (the greppable line's tail).
    pub what: String,
}

/// One freeze's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the freeze was confirmed (RFC 3339).
    pub at: String,
    /// The request whose answer the freeze followed (the last one answered before it).
    pub request_id: String,
    /// From writing `cgroup.freeze` to the kernel confirming it, µs.
    pub freeze_us: u64,
    /// How long reading the report took (after the freeze), µs.
    pub gather_us: u64,
    /// What was cut off (empty: nothing).
    pub hazards: Vec<Hazard>,
    /// A request thawed the instance before the kernel's view was read: only what the
    /// runtime's agent reported is kept (a thawed instance would mislead the rest).
    pub partial: bool,
}

impl Report {
    /// The greppable lines, `FC Freeze Hazard RequestId: <id>: <what>`.
    pub fn lines(&self) -> Vec<String> {
        self.hazards.iter().map(|h| line(&self.request_id, &h.what)).collect()
    }
}

/// A hazard's log line.
pub fn line(request_id: &str, what: &str) -> String {
    format!("FC Freeze Hazard RequestId: {request_id}: {what}")
}

/// What [`gather`] needs.
#[derive(Debug)]
pub struct Input {
    /// The instance's processes (host pids, from `cgroup.procs`).
    pub pids: Vec<i32>,
    /// Its init (fcsup's, not the function's): never a child hazard.
    pub init_pid: i32,
    /// CPU the instance used from the response to the freeze (its cgroup's `cpu.stat`, read
    /// at both anyway), µs.
    pub cpu_since_response_us: Option<u64>,
    /// The processes seen at the previous freeze, `(pid, starttime)`.
    pub baseline: HashSet<(i32, u64)>,
    /// Ports of fcsup's own connections into the instance (the function's port, the runtime
    /// API): their queues are fcsup's business, not the function's.
    pub own_ports: Vec<u16>,
    /// Bytes in the stdout/stderr pipes not yet read by fcsup.
    pub unread_output: usize,
    /// What the runtime's agent reported pending with its last answer.
    pub pending: Vec<String>,
    /// A built-in runtime: the agent's main thread (the init's child's) is still busy with
    /// the runtime API exchange its answer began, so the kernel cannot judge it; the agent
    /// reports what the function left on it instead ([`Input::pending`]).
    pub agent: bool,
}

/// What [`gather`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The hazards, in kind order.
    pub hazards: Vec<Hazard>,
    /// The processes there now, the next freeze's baseline.
    pub processes: HashSet<(i32, u64)>,
}

/// Reads what the frozen instance was doing (blocking: run it on a blocking thread).
pub fn gather(input: Input) -> Found {
    let mut found = Found::default();
    let mut names: HashMap<i32, String> = HashMap::new();
    let mut main_process = None;
    for &pid in &input.pids {
        if let Some(st) = procfs::process(pid) {
            found.processes.insert((pid, st.starttime));
            if pid != input.init_pid && st.state != 'Z' && !input.baseline.contains(&(pid, st.starttime)) && !input.baseline.is_empty() {
                found.hazards.push(Hazard { kind: Kind::Child, what: format!("child process {pid} ({}) still running", st.comm) });
            }
            if st.ppid == input.init_pid {
                main_process = Some(pid);
            }
            names.insert(pid, st.comm);
        }
    }
    // The function's main thread caught running right after its answer is taken as finishing
    // that answer (writing it out, going back to its accept loop; fcsup's own agents posting
    // theirs): under load that can take milliseconds of CPU, so no CPU rule tells it apart.
    for t in procfs::threads(&input.pids) {
        if !t.user_mode || t.pid == input.init_pid || main_process == Some(t.tid) {
            continue;
        }
        let process = names.get(&t.pid).map_or("?", String::as_str);
        let mut what = format!("thread {} ({}) of process {} ({process}) was running when frozen", t.tid, t.stat.comm, t.pid);
        if let Some(us) = input.cpu_since_response_us {
            let _ = write!(what, "; the instance used {:.3} ms CPU between the response and the freeze", us as f64 / 1e3);
        }
        found.hazards.push(Hazard { kind: Kind::Thread, what });
    }
    if let Some(&pid) = input.pids.first() {
        for s in procfs::sockets(pid) {
            if input.own_ports.contains(&s.local.port()) || input.own_ports.contains(&s.remote.port()) {
                continue;
            }
            if let Some(h) = socket_hazard(&s) {
                found.hazards.push(h);
            }
        }
    }
    if input.unread_output > 0 {
        found.hazards.push(Hazard { kind: Kind::Output, what: format!("{} bytes written to stdout/stderr not yet collected", input.unread_output) });
    }
    for p in input.pending.into_iter().take(MAX_PENDING) {
        found.hazards.push(Hazard { kind: Kind::Runtime, what: format!("pending in the runtime: {p}") });
    }
    found.hazards.sort_by_key(|h| h.kind);
    found
}

/// A socket's hazard, if it has one: bytes queued to send (TCP: unsent or unacknowledged), or
/// a TCP handshake under way. Listening sockets and bytes received but unread are not: the
/// freeze loses nothing there that the function has not yet asked for.
fn socket_hazard(s: &procfs::Socket) -> Option<Hazard> {
    let p = s.proto.as_str();
    match (s.proto, s.state) {
        (procfs::Proto::Tcp, 10) => None,
        (procfs::Proto::Tcp, 2 | 3) => Some(Hazard {
            kind: Kind::Connecting,
            what: format!("{p} {} -> {} still connecting ({})", s.local, s.remote, procfs::tcp_state(s.state)),
        }),
        (procfs::Proto::Tcp, _) if s.tx_queue > 0 => Some(Hazard {
            kind: Kind::Socket,
            what: format!("{} bytes unsent on {p} {} -> {} ({})", s.tx_queue, s.local, s.remote, procfs::tcp_state(s.state)),
        }),
        (procfs::Proto::Udp, _) if s.tx_queue > 0 => {
            Some(Hazard { kind: Kind::Socket, what: format!("{} bytes unsent on {p} {} -> {}", s.tx_queue, s.local, s.remote) })
        }
        _ => None,
    }
}

/// When the instance last froze.
#[derive(Debug, Clone, Copy)]
struct Frozen {
    /// Which freeze (counted from 1).
    seq: u64,
    /// `cgroup.freeze` written: the function's last moment of running.
    began: Instant,
    /// The kernel confirmed it.
    confirmed: Instant,
}

/// What a waiting invocation learns of the freeze that followed it.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The request the freeze followed ("" at boot).
    pub request_id: String,
    /// The report, or `None` when no freeze came (another request came first, or it failed).
    pub report: Option<Report>,
}

/// One instance's freeze-hazard state.
#[derive(Debug)]
pub struct Tracker {
    inner: Mutex<State>,
    events: tokio::sync::watch::Sender<Event>,
}

#[derive(Debug, Default)]
struct State {
    /// The last request answered since the last freeze.
    answered: Option<String>,
    /// The instance's `cpu.stat` usage when the last answer came, µs.
    response_cpu: Option<u64>,
    baseline: HashSet<(i32, u64)>,
    history: VecDeque<Report>,
    frozen: Option<Frozen>,
    /// How long the last thaw found it frozen, and how far its clocks jumped.
    thawed: Option<(Duration, Duration)>,
    /// Freezes so far.
    freezes: u64,
    /// Requests whose callers wait for their freeze's report (`fail` mode, Tail).
    awaited: HashSet<String>,
    /// When the last report was gathered.
    last_gather: Option<std::time::Instant>,
}

/// Reports nobody waits for are gathered at most this often per instance: reading `/proc`
/// after every freeze costs CPU the next requests need (at concurrency 1 it cut the request
/// rate tenfold on two cores), and a hazard a function has it keeps having.
pub const MIN_GATHER_GAP: Duration = Duration::from_millis(100);

impl Default for Tracker {
    fn default() -> Self {
        Tracker { inner: Mutex::default(), events: tokio::sync::watch::channel(Event::default()).0 }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The instance's CPU usage (µs) as the last answer came.
    pub fn response_cpu(&self, usage_usec: u64) {
        self.lock().response_cpu = Some(usage_usec);
    }

    /// The usage noted at the last answer, taken.
    pub fn take_response_cpu(&self) -> Option<u64> {
        self.lock().response_cpu.take()
    }

    /// `request_id`'s caller waits for the report of the freeze after its answer.
    pub fn awaited(&self, request_id: &str) {
        self.lock().awaited.insert(request_id.to_string());
    }

    /// `request_id`'s caller no longer waits (its report came, or none will).
    pub fn forget_awaited(&self, request_id: &str) {
        self.lock().awaited.remove(request_id);
    }

    /// Whether the freeze after `request_id`'s answer is reported on: always when its caller
    /// waits for it, else at most every [`MIN_GATHER_GAP`].
    pub fn due(&self, request_id: &str) -> bool {
        let mut s = self.lock();
        let now = std::time::Instant::now();
        let due = s.awaited.remove(request_id) || s.last_gather.is_none_or(|t| now.duration_since(t) >= MIN_GATHER_GAP);
        if due {
            s.last_gather = Some(now);
        }
        due
    }

    /// A request was answered: the next freeze's report is its.
    pub fn answered(&self, request_id: &str) {
        self.lock().answered = Some(request_id.to_string());
    }

    /// The last request answered since the last freeze.
    pub fn peek_answered(&self) -> Option<String> {
        self.lock().answered.clone()
    }

    /// The request the coming freeze follows (taken: the next freeze follows another).
    pub fn take_answered(&self) -> Option<String> {
        self.lock().answered.take()
    }

    /// The baseline of processes for the next gather.
    pub fn baseline(&self) -> HashSet<(i32, u64)> {
        self.lock().baseline.clone()
    }

    /// A confirmed freeze, written at `began`; its number.
    pub fn froze(&self, began: Instant, confirmed: Instant) -> u64 {
        let mut g = self.lock();
        g.freezes += 1;
        let seq = g.freezes;
        g.frozen = Some(Frozen { seq, began, confirmed });
        seq
    }

    /// Whether freeze `seq` still holds (no thaw since).
    pub fn still_frozen(&self, seq: u64) -> bool {
        self.lock().frozen.is_some_and(|f| f.seq == seq)
    }

    /// A confirmed thaw at `now`: remembers how long it was frozen and how far the function's
    /// clocks jumped (from its last moment running to its first again).
    pub fn thawed(&self, now: Instant) {
        let mut g = self.lock();
        if let Some(f) = g.frozen.take() {
            g.thawed = Some((now.saturating_duration_since(f.confirmed), now.saturating_duration_since(f.began)));
        }
    }

    /// The last thaw's figures, once.
    pub fn take_thawed(&self) -> Option<(Duration, Duration)> {
        self.lock().thawed.take()
    }

    /// A gather's result: keeps the report (when it follows a request) and the next
    /// baseline, and tells waiters.
    pub fn record(&self, report: Option<Report>, processes: HashSet<(i32, u64)>) {
        let mut g = self.lock();
        g.baseline = processes;
        if let Some(r) = &report {
            if g.history.len() == KEPT {
                g.history.pop_front();
            }
            g.history.push_back(r.clone());
        }
        drop(g);
        let request_id = report.as_ref().map(|r| r.request_id.clone()).unwrap_or_default();
        self.events.send_replace(Event { request_id, report });
    }

    /// No freeze followed `request_id`'s answer.
    pub fn skipped(&self, request_id: Option<String>) {
        if let Some(request_id) = request_id {
            self.events.send_replace(Event { request_id, report: None });
        }
    }

    /// Subscribes to freeze events (before the freeze can happen).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Event> {
        self.events.subscribe()
    }

    /// The last `n` reports, newest last.
    pub fn recent(&self, n: usize) -> Vec<Report> {
        let g = self.lock();
        g.history.iter().skip(g.history.len().saturating_sub(n)).cloned().collect()
    }
}

/// Waits up to `within` for the report of the freeze that followed `request_id`'s answer;
/// `None` if none came (another request kept the instance thawed, or time ran out).
pub async fn wait_report(mut rx: tokio::sync::watch::Receiver<Event>, request_id: &str, within: Duration) -> Option<Report> {
    let wait = async {
        loop {
            rx.changed().await.ok()?;
            let e = rx.borrow_and_update().clone();
            if e.request_id == request_id {
                return e.report;
            }
        }
    };
    tokio::time::timeout(within, wait).await.ok().flatten()
}

/// Hazards counted per function and kind since fcsup started, for `fcsup report`.
#[derive(Debug, Default)]
pub struct Totals {
    by: Mutex<BTreeMap<String, FunctionHazards>>,
}

/// One function's hazards.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct FunctionHazards {
    /// Function.
    pub function: String,
    /// Freezes that cut something off.
    pub freezes: u64,
    /// Hazards, by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// The latest hazard line.
    pub last: String,
}

impl Totals {
    /// Counts one report of `function`.
    pub fn add(&self, function: &str, report: &Report) {
        if report.hazards.is_empty() {
            return;
        }
        let mut g = self.by.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = g.entry(function.to_string()).or_insert_with(|| FunctionHazards { function: function.into(), ..Default::default() });
        f.freezes += 1;
        for h in &report.hazards {
            *f.by_kind.entry(h.kind.as_str().into()).or_default() += 1;
        }
        f.last = report.lines().pop().unwrap_or_default();
    }

    /// Every function's, in name order.
    pub fn summary(&self) -> Vec<FunctionHazards> {
        self.by.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }
}

/// `fcsup report`'s section: one line per function.
pub fn table(rows: &[FunctionHazards]) -> String {
    let mut out = String::from("\nFreeze hazards (what freezes cut off, since fcsup started):\n");
    if rows.is_empty() {
        out.push_str("  none\n");
    }
    for r in rows {
        let kinds: Vec<String> = r.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "  {:<20} {} freezes: {}", r.function, r.freezes, kinds.join(", "));
        let _ = writeln!(out, "  {:<20} last: {}", "", r.last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: u8, tx: u64) -> procfs::Socket {
        procfs::Socket {
            proto: procfs::Proto::Tcp,
            local: "127.0.0.1:40312".parse().unwrap(),
            remote: "127.0.0.1:7000".parse().unwrap(),
            state,
            tx_queue: tx,
            rx_queue: 5,
        }
    }

    #[test]
    fn sockets_are_hazards_when_they_hold_unsent_bytes_or_a_handshake() {
        assert_eq!(socket_hazard(&sock(1, 0)), None);
        assert_eq!(socket_hazard(&sock(10, 7)), None);
        assert_eq!(socket_hazard(&sock(1, 3412)).unwrap().what, "3412 bytes unsent on tcp 127.0.0.1:40312 -> 127.0.0.1:7000 (ESTABLISHED)");
        let h = socket_hazard(&sock(2, 0)).unwrap();
        assert_eq!((h.kind, h.what.as_str()), (Kind::Connecting, "tcp 127.0.0.1:40312 -> 127.0.0.1:7000 still connecting (SYN_SENT)"));
    }

    #[test]
    fn reports_wait_for_their_own_request_and_totals_count_kinds() {
        let t = Tracker::default();
        let rx = t.subscribe();
        let report = Report {
            at: "now".into(),
            request_id: "r2".into(),
            freeze_us: 1,
            gather_us: 1,
            hazards: vec![Hazard { kind: Kind::Child, what: "child process 9 (sleep) still running".into() }],
            partial: false,
        };
        t.skipped(Some("r1".into()));
        t.record(Some(report.clone()), HashSet::new());
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let got = rt.block_on(wait_report(rx, "r2", Duration::from_millis(100)));
        assert_eq!(got.unwrap().lines(), vec!["FC Freeze Hazard RequestId: r2: child process 9 (sleep) still running"]);
        assert_eq!(t.recent(10).len(), 1);
        let totals = Totals::default();
        totals.add("f", &report);
        totals.add("f", &Report { hazards: vec![], ..report });
        let s = totals.summary();
        assert_eq!((s[0].freezes, s[0].by_kind["child"]), (1, 1));
        assert!(table(&s).contains("f                    1 freezes: child 1"));
    }

    #[test]
    fn the_setting_is_report_by_default_and_refuses_other_words() {
        use crate::config::{Config, FreezeHazards};
        let dir = tempfile::tempdir().unwrap();
        let props = |ext: &str| format!("functionName: f\nruntime: custom.debian10\ncode: .\n{ext}");
        let mode = |ext: &str| Config::parse_function(&props(ext), "f", dir.path()).map(|f| f.freeze_hazards);
        assert_eq!(mode("").unwrap(), FreezeHazards::Report);
        assert_eq!(mode("fcsup: {freezeHazards: fail}").unwrap(), FreezeHazards::Fail);
        assert_eq!(mode("fcsup: {freezeHazards: off}").unwrap(), FreezeHazards::Off);
        let e = mode("fcsup: {freezeHazards: loud}").unwrap_err().to_string();
        assert!(e.contains("report") && e.contains("fail") && e.contains("off"), "{e}");
    }

    #[test]
    fn a_stopped_spinning_process_is_caught_in_user_mode_and_a_sleeping_one_is_not() {
        // SIGSTOP stops a task the way the freezer does (in the kernel's signal path), so the
        // same `syscall` reading tells a computing task from a blocked one.
        let spawn = |script: &str| std::process::Command::new("sh").args(["-c", script]).spawn().unwrap();
        let (mut spin, mut sleep) = (spawn("while :; do :; done"), spawn("exec sleep 30"));
        std::thread::sleep(Duration::from_millis(200));
        let pid = |c: &std::process::Child| i32::try_from(c.id()).unwrap();
        for c in [&spin, &sleep] {
            // SAFETY: kill with a pid we spawned and still own (not reaped).
            unsafe { libc::kill(pid(c), libc::SIGSTOP) };
        }
        std::thread::sleep(Duration::from_millis(100));
        let threads = procfs::threads(&[pid(&spin), pid(&sleep)]);
        let of = |p: i32| threads.iter().find(|t| t.pid == p).unwrap().clone();
        let (a, b) = (of(pid(&spin)), of(pid(&sleep)));
        for c in [&mut spin, &mut sleep] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(a.user_mode && a.cpu_ns > 0, "{a:?}");
        assert!(!b.user_mode && b.stat.comm == "sleep", "{b:?}");
    }
}
