//! HTTP health checks (`healthCheckConfig`, fc-spec §5.1): the first check follows the
//! Initializer and must pass for the start to succeed; later checks run every `period` but
//! only while the instance is thawed. A frozen instance is never thawed to be probed and is
//! never judged by a probe that the freeze interrupted: being frozen is not being sick.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use super::{Instance, StartError};
use crate::config::HealthCheck;

/// Consecutive probe outcomes and the verdict they add up to.
#[derive(Debug)]
pub(super) struct Health {
    pub(super) healthy: bool,
    successes: u32,
    failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health { healthy: true, successes: 0, failures: 0 }
    }
}

impl Health {
    /// Counts one outcome; returns the new verdict when it changed.
    fn record(&mut self, ok: bool, hc: &HealthCheck) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if !self.healthy && self.successes >= hc.success_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.healthy && self.failures >= hc.failure_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

impl Instance {
    /// One probe: GET the configured path within `timeout`; 200 ≤ status < 400 passes.
    async fn probe(&self, hc: &HealthCheck) -> Result<(), String> {
        let req = Request::get(&hc.path)
            .header("host", format!("127.0.0.1:{}", self.function.port))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(hc.timeout, self.conns.status_of(&self.netns, req)).await {
            Ok(Ok(s)) if (200..400).contains(&s.as_u16()) => Ok(()),
            Ok(Ok(s)) => Err(format!("GET {} answered HTTP {}", hc.path, s.as_u16())),
            Ok(Err(e)) => Err(format!("GET {}: {e}", hc.path)),
            Err(_) => Err(format!("GET {} did not answer within {} s", hc.path, hc.timeout.as_secs())),
        }
    }

    /// The start's health check: after `initialDelaySeconds`, up to `failureThreshold`
    /// probes `periodSeconds` apart; the first pass makes the instance ready.
    pub(super) async fn first_health_check(&self, hc: &HealthCheck) -> Result<(), StartError> {
        tokio::time::sleep(hc.initial_delay).await;
        let mut last = String::new();
        for attempt in 0..hc.failure_threshold {
            if attempt > 0 {
                tokio::time::sleep(hc.period).await;
            }
            match self.probe(hc).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(StartError::HealthCheck { port: self.function.port, detail: last })
    }

    /// Probes every `period` while the instance is thawed, abandoning any probe or wait that
    /// a freeze interrupts. Ends with the instance.
    pub(super) fn watch_health(self: &Arc<Self>, hc: HealthCheck) {
        let me = Arc::downgrade(self);
        let mut thawed = self.thawed.subscribe();
        tokio::spawn(async move {
            loop {
                if thawed.wait_for(|t| *t).await.is_err() {
                    return;
                }
                let froze = tokio::select! {
                    _ = tokio::time::sleep(hc.period) => false,
                    r = thawed.wait_for(|t| !*t) => { if r.is_err() { return } true }
                };
                if froze {
                    continue;
                }
                let Some(inst) = me.upgrade() else { return };
                if !inst.usable() {
                    return;
                }
                let outcome = tokio::select! {
                    r = inst.probe(&hc) => Some(r),
                    _ = thawed.wait_for(|t| !*t) => None,
                };
                let Some(outcome) = outcome else { continue };
                let changed = inst.health.lock().expect("health").record(outcome.is_ok(), &hc);
                match (changed, outcome) {
                    (Some(false), Err(e)) => {
                        tracing::warn!(function = %inst.function.name, instance = %inst.id, "unhealthy: {e}; no new requests go to it");
                        inst.log.note(&format!("FC health check failed {} times: {e}; instance is unhealthy", hc.failure_threshold));
                    }
                    (Some(true), _) => {
                        tracing::info!(function = %inst.function.name, instance = %inst.id, "healthy again");
                        inst.log.note("FC health check passed; instance is healthy again");
                    }
                    _ => {}
                }
            }
        });
    }

    /// Whether the last probes say the instance may take requests.
    pub fn healthy(&self) -> bool {
        self.health.lock().expect("health").healthy
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hc() -> HealthCheck {
        HealthCheck {
            path: "/ready".into(),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 2,
        }
    }

    #[test]
    fn thresholds_count_consecutive_outcomes() {
        let mut h = Health::default();
        assert_eq!(h.record(false, &hc()), None);
        assert_eq!(h.record(false, &hc()), None);
        assert_eq!(h.record(true, &hc()), None, "a pass resets the failure streak");
        assert_eq!(h.record(false, &hc()), None);
        assert_eq!(h.record(false, &hc()), None);
        assert_eq!(h.record(false, &hc()), Some(false));
        assert!(!h.healthy);
        assert_eq!(h.record(true, &hc()), None);
        assert_eq!(h.record(true, &hc()), Some(true));
    }
}
