//! Sample summaries: n, min, nearest-rank percentiles, max.

use serde::Serialize;

/// One result row of `fcsup bench` (the JSON shape of issue 6).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `fcsup`, `plain`, `crun`, `runc`, `sigstop`.
    pub system: String,
    /// `cold_start`, `cold_start.exec`, `freeze`, `thaw`, `warm_invoke_added`, …
    pub metric: String,
    /// What ran: `native`, `python`, `1 busy thread`, …
    pub workload: String,
    /// `us`, `req/s`, `instances/s`, `KiB`, `bool`.
    pub unit: String,
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Row {
    /// Summarises `samples` (any order; must not be empty).
    pub fn new(system: &str, metric: &str, workload: &str, unit: &str, samples: &[f64]) -> Row {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "q is in 0..=1, so the rank is in 0..=len")]
        let rank = |q: f64| s[(((q * s.len() as f64).ceil() as usize).max(1) - 1).min(s.len() - 1)];
        Row {
            system: system.into(),
            metric: metric.into(),
            workload: workload.into(),
            unit: unit.into(),
            n: s.len(),
            min: s[0],
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: s[s.len() - 1],
        }
    }

    /// The row of quantile-wise differences `self − base` (added latency).
    pub fn minus(&self, base: &Row, metric: &str) -> Row {
        Row {
            system: self.system.clone(),
            metric: metric.into(),
            workload: self.workload.clone(),
            unit: self.unit.clone(),
            n: self.n.min(base.n),
            min: self.min - base.min,
            p50: self.p50 - base.p50,
            p90: self.p90 - base.p90,
            p99: self.p99 - base.p99,
            max: self.max - base.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        let r = Row::new("fcsup", "thaw", "x", "us", &s);
        assert_eq!((r.n, r.min, r.p50, r.p90, r.p99, r.max), (100, 1.0, 50.0, 90.0, 99.0, 100.0));
        let one = Row::new("fcsup", "thaw", "x", "us", &[7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }

    #[test]
    fn added_latency_is_quantile_wise() {
        let a = Row::new("fcsup", "warm_invoke", "x", "us", &[10.0, 20.0]);
        let b = Row::new("plain", "warm_invoke", "x", "us", &[4.0, 5.0]);
        let d = a.minus(&b, "warm_invoke_added");
        assert_eq!((d.system.as_str(), d.p50, d.max), ("fcsup", 6.0, 15.0));
    }
}
