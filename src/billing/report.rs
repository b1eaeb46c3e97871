//! `fcsup report`: the ledger summed per function.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::price::{self, Cu};
use super::{Phase, WindowRecord};

/// One function's bill.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FunctionBill {
    /// Function.
    pub function: String,
    /// Invocations billed.
    pub invocations: u64,
    /// Instances started.
    pub cold_starts: u64,
    /// Billed active time, ms (requests, hooks, starts).
    pub billed_ms: u64,
    /// Provisioned instances' frozen time, ms (idle rates).
    pub idle_ms: u64,
    /// CPU the cgroups used, ms.
    pub cpu_ms: f64,
    /// FC capacity units.
    pub cu: Cu,
    /// CU of the CPU really used.
    pub measured_cpu_cu: f64,
    /// `cu.total` in USD at the tier-1 price.
    pub cost_usd: f64,
}

/// Sums `records` per function, in name order.
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a WindowRecord>) -> Vec<FunctionBill> {
    let mut by: BTreeMap<&str, (FunctionBill, BTreeSet<&str>)> = BTreeMap::new();
    for r in records {
        let (b, started) = by.entry(&r.function).or_default();
        b.invocations += u64::from(r.invocations);
        if r.cold_start {
            started.insert(&r.instance);
        }
        if r.phase == Phase::Idle {
            b.idle_ms += r.billed_ms;
        } else {
            b.billed_ms += r.billed_ms;
        }
        b.cpu_ms += r.cpu_us as f64 / 1000.0;
        b.cu.add(&r.cu);
        b.measured_cpu_cu += r.measured_cpu_cu;
    }
    by.into_iter()
        .map(|(name, (mut b, started))| {
            b.function = name.to_string();
            b.cold_starts = started.len() as u64;
            b.cost_usd = price::usd(b.cu.total);
            b
        })
        .collect()
}

/// The bills as a terminal table.
pub fn table(bills: &[FunctionBill]) -> String {
    let mut out = format!(
        "{:<20} {:>11} {:>11} {:>12} {:>10} {:>11} {:>12} {:>12} {:>12}\n",
        "FUNCTION", "INVOCATIONS", "COLD STARTS", "BILLED MS", "IDLE MS", "CPU MS", "CU", "CPU CU", "COST USD"
    );
    for b in bills {
        out.push_str(&format!(
            "{:<20} {:>11} {:>11} {:>12} {:>10} {:>11.1} {:>12.6} {:>12.6} {:>12.8}\n",
            b.function, b.invocations, b.cold_starts, b.billed_ms, b.idle_ms, b.cpu_ms, b.cu.total, b.measured_cpu_cu, b.cost_usd
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::billing::{ResourceMode, Usage};
    use crate::cgroup::{CpuStat, MemorySource};
    use crate::config::Config;

    #[test]
    fn sums_per_function_and_counts_cold_starts_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        let yaml = "resources:\n  f:\n    props: {code: ./code, memorySize: 1024, cpu: 1}\n";
        let f = Config::parse(yaml, std::path::Path::new("s.yaml"), dir.path()).unwrap().functions.remove(0);
        let usage = |ms: u64, cpu_ms: u64| Usage {
            wall: Duration::from_micros(ms * 1000 - 1),
            cpu: CpuStat { usage_usec: cpu_ms * 1000, user_usec: cpu_ms * 1000, system_usec: 0 },
            peak_memory_bytes: None,
            memory_source: MemorySource::None,
        };
        let recs = [
            WindowRecord::new(&f, "i1", Phase::Initialize, ResourceMode::OnDemand, true, vec![], 0, usage(50, 40)),
            WindowRecord::new(&f, "i1", Phase::Invoke, ResourceMode::OnDemand, false, vec!["a".into(), "b".into()], 1, usage(100, 30)),
            WindowRecord::new(&f, "i1", Phase::PreStop, ResourceMode::OnDemand, false, vec![], 2, usage(10, 1)),
        ];
        let b = &summarize(&recs)[0];
        assert_eq!((b.invocations, b.cold_starts, b.billed_ms), (2, 1, 160));
        assert!((b.cpu_ms - 71.0).abs() < 1e-9);
        // 0.16 vCPU-s + 0.16 GB-s × 0.15 + 2 invocations.
        assert!((b.cu.total - (0.16 + 0.024 + 2.0 * 0.0075)).abs() < 1e-9, "{:?}", b.cu);
        assert!(table(std::slice::from_ref(b)).contains("f "));
    }
}
