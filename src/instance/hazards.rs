//! The instance's side of freeze hazards ([`crate::hazards`], README, Freeze hazards): the
//! report read on a blocking thread once the freeze is confirmed (nothing is read on the
//! response path or before the freeze), where its lines go, and what the thaw tells the request
//! that caused it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

use super::{us, Instance, InvokeError, Kernel, Reply, UNHANDLED};
use crate::config::FreezeHazards;
use crate::hazards::{self, Report};

/// How long a `Tail` invocation waits for its freeze's report before answering without it.
const TAIL_WAIT: Duration = Duration::from_millis(100);

impl<K: Kernel> Instance<K> {
    fn hazards_on(&self) -> bool {
        self.function.freeze_hazards != FreezeHazards::Off
    }

    /// The processes there when the instance is ready: no child hazard for them.
    pub(super) fn hazards_baseline(&self) {
        if !self.hazards_on() {
            return;
        }
        let processes = self.kernel.pids().into_iter().filter_map(|p| Some((p, hazards::procfs::process(p)?.starttime))).collect();
        self.hazards.record(None, processes);
    }

    /// The instance's CPU usage as an answer came (read for the request's accounting anyway).
    pub(super) fn hazards_response_cpu(&self, usage_usec: u64) {
        if self.hazards_on() {
            self.hazards.response_cpu(usage_usec);
        }
    }

    /// Just before the freeze (reads nothing): the request it follows, if any, and the CPU
    /// usage at its answer.
    pub(super) fn hazards_before(&self) -> Option<(String, Option<u64>)> {
        if !self.hazards_on() {
            return None;
        }
        let request_id = self.hazards.take_answered()?;
        Some((request_id, self.hazards.take_response_cpu()))
    }

    /// The freeze written at `began` is confirmed, the cgroup's CPU usage then `usage_usec`:
    /// reads the report off the response path.
    pub(super) fn hazards_after(self: &Arc<Self>, before: Option<(String, Option<u64>)>, began: Instant, took: Duration, usage_usec: u64) {
        let seq = self.hazards.froze(began, began + took);
        let Some((request_id, at_response)) = before else { return };
        if !self.hazards.due(&request_id) {
            return;
        }
        let mut own_ports = vec![self.function.port];
        if self.runtime_api.is_some() {
            own_ports.push(super::builtin::RUNTIME_API_ADDR.port());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let inst = me.clone();
            let read = move || {
                hazards::gather(hazards::Input {
                    pids: inst.kernel.pids(),
                    init_pid: inst.kernel.placement().pid,
                    cpu_since_response_us: at_response.map(|r| usage_usec.saturating_sub(r)),
                    baseline: inst.hazards.baseline(),
                    own_ports,
                    unread_output: inst.log.unread_bytes(),
                    pending: inst.runtime_api.as_ref().map(crate::runtime_api::RuntimeApi::take_pending).unwrap_or_default(),
                    agent: inst.runtime_api.is_some(),
                })
            };
            let Ok(mut found) = tokio::task::spawn_blocking(read).await else { return };
            let partial = !me.hazards.still_frozen(seq);
            if partial {
                found.hazards.retain(|h| h.kind == hazards::Kind::Runtime);
            }
            let report = Report {
                at: crate::clock::now_rfc3339(),
                request_id,
                freeze_us: us(took),
                gather_us: us(t.elapsed()),
                hazards: found.hazards,
                partial,
            };
            for h in &report.hazards {
                me.reporting.metrics().freeze_hazard(&me.function.name, h.kind.as_str());
            }
            for l in report.lines() {
                me.log.note(&l);
            }
            me.reporting.hazards().add(&me.function.name, &report);
            me.hazards.record(Some(report), found.processes);
        });
    }

    /// The freeze attempt after `before` did not happen.
    pub(super) fn hazards_skipped(&self, before: Option<(String, Option<u64>)>) {
        if let Some((request_id, _)) = before {
            // The next freeze follows this request still, unless another is answered first.
            self.hazards.answered(&request_id);
            self.hazards.skipped(Some(request_id));
        }
    }

    /// The freeze that would follow the last answer is not coming (a request came first).
    pub(super) fn hazards_not_frozen(&self) {
        self.hazards.skipped(self.hazards.peek_answered());
    }

    /// A confirmed thaw.
    pub(super) fn hazards_thawed(&self) {
        self.hazards.thawed(Instant::now());
    }

    /// The log line of the request that thawed the instance: how long it was frozen, and how
    /// far the function's clocks jumped (`CLOCK_MONOTONIC` and `CLOCK_REALTIME` go on while
    /// it is frozen; it sees them leap from its last moment running to its first again).
    pub(super) fn note_thaw(&self, request_id: &str) {
        if !self.hazards_on() {
            return;
        }
        if let Some((frozen, jump)) = self.hazards.take_thawed() {
            self.log.note(&format!(
                "FC Thaw RequestId: {request_id}: frozen for {:.3} ms; the function's clocks jumped {:.3} ms",
                frozen.as_secs_f64() * 1e3,
                jump.as_secs_f64() * 1e3
            ));
        }
    }

    /// The last `n` freeze reports (`GET /admin/instances/{id}/hazards`).
    pub fn hazards(&self, n: usize) -> Vec<Report> {
        self.hazards.recent(n)
    }

    /// Whether `request_id`'s answer waits for the report of the freeze that follows it: in
    /// `fail` mode, or when the caller asked for its log (`Tail`).
    pub(super) fn hazards_wait(&self, want_log: bool) -> Option<Duration> {
        match self.function.freeze_hazards {
            FreezeHazards::Off => None,
            FreezeHazards::Fail => Some(self.function.timeout),
            FreezeHazards::Report => want_log.then_some(TAIL_WAIT),
        }
    }

    /// Marks `request_id` answered: the next freeze's report is its.
    pub(super) fn hazards_answered(&self, request_id: &str) {
        if self.hazards_on() {
            self.hazards.answered(request_id);
        }
    }

    /// Subscribes to freeze reports.
    pub(super) fn hazards_subscribe(&self) -> tokio::sync::watch::Receiver<hazards::Event> {
        self.hazards.subscribe()
    }

    /// Puts the report of the freeze that followed a reply into it: its lines in the Tail log
    /// and, in `fail` mode, a hazard turns the reply into the function's error.
    pub(super) fn apply_hazards(&self, result: Result<Reply, InvokeError>, report: Option<Report>) -> Result<Reply, InvokeError> {
        let report = match report {
            Some(r) if !r.hazards.is_empty() => r,
            _ => return result,
        };
        let mut reply = result?;
        let lines = report.lines();
        for l in &lines {
            reply.log.extend_from_slice(l.as_bytes());
            reply.log.push(b'\n');
        }
        if self.function.freeze_hazards == FreezeHazards::Fail && reply.error_type.is_none() {
            let body = serde_json::json!({
                "errorMessage": format!("the freeze after this invocation's answer cut off {} thing(s) it left running (fcsup.freezeHazards: fail): {}", lines.len(), report.hazards.iter().map(|h| h.what.as_str()).collect::<Vec<_>>().join("; ")),
                "errorType": "FreezeHazard",
                "stackTrace": lines,
            });
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            reply.headers = headers;
            reply.status = hyper::StatusCode::OK;
            reply.body = Bytes::from(body.to_string());
            reply.error_type = Some(UNHANDLED);
        }
        Ok(reply)
    }
}
