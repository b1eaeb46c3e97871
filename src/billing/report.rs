//! `fcsup report`: the ledger summed per function (and per node), from one ledger or merged
//! from several: each record is billed once however many sources hold it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::price::{self, Cu};
use super::{Phase, WindowRecord};

/// One function's bill (on one node, when split by node).
#[derive(Debug, Default, Clone, Serialize)]
pub struct FunctionBill {
    /// The node, when the bill is split by node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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

/// Records merged from several sources.
#[derive(Debug, Default)]
pub struct Merged {
    /// Each record once, in the order first seen; those that named no node carry their
    /// source's name.
    pub records: Vec<WindowRecord>,
    /// Records dropped because an earlier source held the same record.
    pub duplicates: usize,
}

/// What makes a record the same record wherever it is read.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Identity {
    /// The id its ledger gave it.
    Id(String),
    /// A record older than ids: its whole content (instance, phase, start, wall and CPU µs,
    /// request ids, node…). Two such records are one only if equal in every field, which two
    /// distinct windows cannot be in practice (one instance's windows follow each other, and
    /// requests have unique ids).
    Content(String),
}

fn identity(r: &WindowRecord) -> Identity {
    match &r.id {
        Some(id) => Identity::Id(id.clone()),
        None => Identity::Content(serde_json::to_string(r).unwrap_or_default()),
    }
}

/// Merges `(source name, records)` pairs: a record already taken from an earlier source (the
/// same ledger file given twice, a node asked twice, a node's file and the node itself) is
/// dropped and counted; a record naming no node gets its source's name.
pub fn merge(sources: impl IntoIterator<Item = (String, Vec<WindowRecord>)>) -> Merged {
    let mut seen = HashSet::new();
    let mut out = Merged::default();
    for (source, records) in sources {
        for mut r in records {
            if !seen.insert(identity(&r)) {
                out.duplicates += 1;
                continue;
            }
            if r.node.is_none() {
                r.node = Some(source.clone());
            }
            out.records.push(r);
        }
    }
    out
}

/// Sums `records` per function, in name order.
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a WindowRecord>) -> Vec<FunctionBill> {
    sum(records, |_| None)
}

/// Sums `records` per node and function, in that order (a record naming no node counts
/// under the node `-`).
pub fn summarize_by_node<'a>(records: impl IntoIterator<Item = &'a WindowRecord>) -> Vec<FunctionBill> {
    sum(records, |r| Some(r.node.as_deref().unwrap_or("-")))
}

fn sum<'a>(records: impl IntoIterator<Item = &'a WindowRecord>, node: impl Fn(&'a WindowRecord) -> Option<&'a str>) -> Vec<FunctionBill> {
    // (node, function) → the bill and the instances it started.
    type Key<'k> = (Option<&'k str>, &'k str);
    let mut by: BTreeMap<Key<'a>, (FunctionBill, BTreeSet<&str>)> = BTreeMap::new();
    for r in records {
        let (b, started) = by.entry((node(r), &r.function)).or_default();
        // Saturating: records may come from a node over the network, and a sum that wrapped
        // would take one node's hours off another's bill.
        b.invocations = b.invocations.saturating_add(u64::from(r.invocations));
        if r.cold_start {
            started.insert(&r.instance);
        }
        if r.phase == Phase::Idle {
            b.idle_ms = b.idle_ms.saturating_add(r.billed_ms);
        } else {
            b.billed_ms = b.billed_ms.saturating_add(r.billed_ms);
        }
        b.cpu_ms += r.cpu_us as f64 / 1000.0;
        b.cu.add(&r.cu);
        b.measured_cpu_cu += r.measured_cpu_cu;
    }
    by.into_iter()
        .map(|((node, name), (mut b, started))| {
            b.node = node.map(str::to_string);
            b.function = name.to_string();
            b.cold_starts = started.len() as u64;
            b.cost_usd = price::usd(b.cu.total);
            b
        })
        .collect()
}

/// The bills as a terminal table (with a NODE column when they are split by node).
pub fn table(bills: &[FunctionBill]) -> String {
    let by_node = bills.iter().any(|b| b.node.is_some());
    let mut out = if by_node { format!("{:<20} ", "NODE") } else { String::new() };
    out.push_str(&format!(
        "{:<20} {:>11} {:>11} {:>12} {:>10} {:>11} {:>12} {:>12} {:>12}\n",
        "FUNCTION", "INVOCATIONS", "COLD STARTS", "BILLED MS", "IDLE MS", "CPU MS", "CU", "CPU CU", "COST USD"
    ));
    for b in bills {
        if by_node {
            out.push_str(&format!("{:<20} ", b.node.as_deref().unwrap_or("-")));
        }
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

    fn record(instance: &str, start_ms: u64, wall_ms: u64, node: Option<&str>, id: Option<&str>) -> WindowRecord {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        let yaml = "resources:\n  f:\n    props: {code: ./code, memorySize: 1024, cpu: 1}\n";
        let f = Config::parse(yaml, std::path::Path::new("s.yaml"), dir.path()).unwrap().functions.remove(0);
        let usage =
            Usage { wall: Duration::from_millis(wall_ms), cpu: CpuStat::default(), peak_memory_bytes: None, memory_source: MemorySource::None };
        let mut r = WindowRecord::new(
            &f,
            instance,
            Phase::Invoke,
            ResourceMode::OnDemand,
            false,
            vec![format!("req-{instance}-{start_ms}")],
            start_ms,
            usage,
        );
        r.node = node.map(str::to_string);
        r.id = id.map(str::to_string);
        r
    }

    #[test]
    fn the_same_records_from_two_sources_are_billed_once() {
        let a = vec![record("i1", 1, 10, Some("a"), Some("r1")), record("i1", 2, 20, Some("a"), Some("r2"))];
        let b = vec![record("i2", 1, 100, Some("b"), Some("r3"))];
        let m = merge([("a.jsonl".to_string(), a.clone()), ("b.jsonl".to_string(), b), ("a-again.jsonl".to_string(), a)]);
        assert_eq!((m.records.len(), m.duplicates), (3, 2));
        let total = summarize(&m.records);
        assert_eq!((total.len(), total[0].billed_ms, total[0].invocations, total[0].node.as_deref()), (1, 130, 3, None));
        let split = summarize_by_node(&m.records);
        let got: Vec<_> = split.iter().map(|b| (b.node.as_deref().unwrap(), b.function.as_str(), b.billed_ms)).collect();
        assert_eq!(got, [("a", "f", 30), ("b", "f", 100)]);
        assert!(table(&split).starts_with("NODE "), "{}", table(&split));
        assert!(table(&total).starts_with("FUNCTION "), "{}", table(&total));
    }

    #[test]
    fn a_huge_record_saturates_instead_of_wrapping_the_sum() {
        let mut evil = record("i9", 1, 10, Some("evil"), Some("e1"));
        evil.billed_ms = u64::MAX - 5;
        let honest = record("i1", 2, 100, Some("a"), Some("r1"));
        let b = summarize(&[honest, evil]);
        assert_eq!(b[0].billed_ms, u64::MAX, "wrapped to less than the honest node's 100 ms");
    }

    #[test]
    fn records_without_an_id_are_told_apart_by_their_content_and_named_by_their_source() {
        let old = vec![record("i1", 1, 10, None, None), record("i1", 1, 11, None, None)];
        // The same old file reached under two names: its records count once, under the first.
        let m = merge([("node-a".to_string(), old.clone()), ("copy".to_string(), old)]);
        assert_eq!((m.records.len(), m.duplicates), (2, 2), "same start, different wall: two windows");
        assert!(m.records.iter().all(|r| r.node.as_deref() == Some("node-a")));
        // A record with an id is not the id-less record of the same window (it cannot be: a
        // ledger gives the id as it first writes the record).
        let m = merge([("x".to_string(), vec![record("i1", 1, 10, None, None), record("i1", 1, 10, None, Some("r1"))])]);
        assert_eq!(m.duplicates, 0);
    }
}
