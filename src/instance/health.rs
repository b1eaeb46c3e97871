//! HTTP health checks (`healthCheckConfig`, README, Behaviour decisions): the first check follows the
//! Initializer and must pass for the start to succeed; later checks run every `period` but
//! only while the instance is thawed. A frozen instance is never thawed to be probed and is
//! never judged by a probe that the freeze interrupted: being frozen is not being sick.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use super::errors::ProbeError;
use super::{Instance, Kernel, StartError};
use crate::config::HealthCheck;

/// Consecutive probe outcomes (the verdict they add up to is kept in the lifecycle).
#[derive(Debug, Default)]
pub(super) struct Health {
    successes: u32,
    failures: u32,
}

impl Health {
    /// Counts one outcome against the current verdict `healthy`; the new verdict when it
    /// changed.
    fn record(&mut self, ok: bool, healthy: bool, hc: &HealthCheck) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if !healthy && self.successes >= hc.success_threshold {
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if healthy && self.failures >= hc.failure_threshold {
                return Some(false);
            }
        }
        None
    }
}

impl<K: Kernel> Instance<K> {
    /// One probe: GET the configured path within `timeout`; 200 ≤ status < 400 passes.
    async fn probe(&self, hc: &HealthCheck) -> Result<(), ProbeError> {
        let path = || hc.path.clone();
        let req = Request::get(&hc.path)
            .header("host", format!("127.0.0.1:{}", self.function.port))
            .body(Full::new(Bytes::new()))
            .map_err(|_| ProbeError::Invalid { path: path() })?;
        match tokio::time::timeout(hc.timeout, self.conns.status_of(&self.kernel, req)).await {
            Ok(Ok(s)) if (200..400).contains(&s.as_u16()) => Ok(()),
            Ok(Ok(s)) => Err(ProbeError::Status { path: path(), status: s.as_u16() }),
            Ok(Err(source)) => Err(ProbeError::Conn { path: path(), source }),
            Err(_) => Err(ProbeError::Timeout { path: path(), secs: hc.timeout.as_secs() }),
        }
    }

    /// The start's health check: after `initialDelaySeconds`, up to `failureThreshold`
    /// probes `periodSeconds` apart; the first pass makes the instance ready.
    pub(super) async fn first_health_check(&self, hc: &HealthCheck) -> Result<(), StartError> {
        tokio::time::sleep(hc.initial_delay).await;
        let mut attempt = 0;
        loop {
            match self.probe(hc).await {
                Ok(()) => return Ok(()),
                Err(detail) if attempt + 1 >= hc.failure_threshold => return Err(StartError::HealthCheck { port: self.function.port, detail }),
                Err(_) => {}
            }
            attempt += 1;
            tokio::time::sleep(hc.period).await;
        }
    }

    /// Probes every `period` while the instance is thawed, abandoning any probe or wait that
    /// a freeze interrupts. Ends with the instance.
    pub(super) fn watch_health(self: &Arc<Self>, hc: HealthCheck) {
        let me = Arc::downgrade(self);
        let mut life = self.life.subscribe();
        tokio::spawn(async move {
            loop {
                if life.wait_for(|l| !l.frozen()).await.is_err() {
                    return;
                }
                let froze = tokio::select! {
                    _ = tokio::time::sleep(hc.period) => false,
                    r = life.wait_for(|l| l.frozen()) => { if r.is_err() { return } true }
                };
                if froze {
                    continue;
                }
                let Some(inst) = me.upgrade() else { return };
                if inst.life.borrow().ending() {
                    return;
                }
                let outcome = tokio::select! {
                    r = inst.probe(&hc) => Some(r),
                    _ = life.wait_for(|l| l.frozen()) => None,
                };
                let Some(outcome) = outcome else { continue };
                let healthy = inst.healthy();
                let changed = inst.health.lock().expect("health").record(outcome.is_ok(), healthy, &hc);
                if let Some(verdict) = changed {
                    inst.transition(|l| l.set_healthy(verdict));
                }
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
        assert_eq!(h.record(false, true, &hc()), None);
        assert_eq!(h.record(false, true, &hc()), None);
        assert_eq!(h.record(true, true, &hc()), None, "a pass resets the failure streak");
        assert_eq!(h.record(false, true, &hc()), None);
        assert_eq!(h.record(false, true, &hc()), None);
        assert_eq!(h.record(false, true, &hc()), Some(false));
        assert_eq!(h.record(true, false, &hc()), None);
        assert_eq!(h.record(true, false, &hc()), Some(true));
    }
}
