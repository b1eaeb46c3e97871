//! `GET /metrics` in Prometheus' text format: invocations and their outcomes, cold starts,
//! freeze and thaw latency, CPU and billed time per function and phase, instances by state.
//! Counters are updated where things happen; instance gauges are taken at scrape time.
//! A serving fcsup labels every series with `node="<--node-name>"`, so one Prometheus
//! scraping several nodes keeps their series apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::billing::WindowRecord;

/// `function`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    /// Function name.
    pub function: String,
}

/// `function`, `outcome` (`success`, or FC's name for the failure: `outcome.rs` decides it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Function name.
    pub function: String,
    /// `success`, `FunctionTimeoutError`, `InitializationError`, `ResourceExhausted`, …
    pub outcome: String,
}

/// `function`, `phase`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Function name.
    pub function: String,
    /// Ledger phase.
    pub phase: String,
}

/// `function`, `kind` (of a freeze hazard).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HazardLabels {
    /// Function name.
    pub function: String,
    /// `thread`, `socket`, `connecting`, `child`, `output`, `runtime`.
    pub kind: String,
}

/// `function`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Function name.
    pub function: String,
    /// Instance state.
    pub state: String,
}

type FloatCounter = Counter<f64, AtomicU64>;

fn latency() -> Histogram {
    // 10 µs … ~0.3 s.
    Histogram::new(exponential_buckets(10e-6, 2.0, 16))
}

fn start_latency() -> Histogram {
    // 1 ms … ~32 s.
    Histogram::new(exponential_buckets(1e-3, 2.0, 16))
}

/// Every metric fcsup exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    cold_starts: Family<FunctionLabel, Counter>,
    cold_start_seconds: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    freeze_seconds: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    thaw_seconds: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    cpu_seconds: Family<PhaseLabels, FloatCounter>,
    billed_seconds: Family<PhaseLabels, FloatCounter>,
    capacity_units: Family<PhaseLabels, FloatCounter>,
    instances: Family<StateLabels, Gauge>,
    freeze_hazards: Family<HazardLabels, Counter>,
}

impl Default for Metrics {
    /// Metrics without a node label.
    fn default() -> Self {
        Metrics::with_registry(Registry::with_prefix("fcsup"))
    }
}

impl Metrics {
    /// Metrics whose every series carries `node="<node>"` (escaped by the encoder).
    pub fn for_node(node: &str) -> Self {
        Metrics::with_registry(Registry::with_prefix_and_labels("fcsup", std::iter::once(("node".into(), node.to_string().into()))))
    }

    fn with_registry(mut r: Registry) -> Self {
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let cold_starts = Family::<FunctionLabel, Counter>::default();
        let cold_start_seconds = Family::<FunctionLabel, Histogram, fn() -> Histogram>::new_with_constructor(start_latency);
        let freeze_seconds = Family::<FunctionLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        let thaw_seconds = Family::<FunctionLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        let cpu_seconds = Family::<PhaseLabels, FloatCounter>::default();
        let billed_seconds = Family::<PhaseLabels, FloatCounter>::default();
        let capacity_units = Family::<PhaseLabels, FloatCounter>::default();
        let instances = Family::<StateLabels, Gauge>::default();
        r.register("invocations", "Invocations answered, by outcome", invocations.clone());
        r.register("cold_starts", "Instances started (cold starts)", cold_starts.clone());
        r.register_with_unit(
            "cold_start",
            "From cgroup creation to ready (listening, Initializer and first health check done)",
            Unit::Seconds,
            cold_start_seconds.clone(),
        );
        r.register_with_unit("freeze", "From writing cgroup.freeze to cgroup.events confirming frozen", Unit::Seconds, freeze_seconds.clone());
        r.register_with_unit("thaw", "From writing cgroup.freeze to cgroup.events confirming thawed", Unit::Seconds, thaw_seconds.clone());
        r.register_with_unit("cpu", "CPU the instances' cgroups used, by phase (cpu.stat)", Unit::Seconds, cpu_seconds.clone());
        r.register_with_unit("billed", "FC-billed duration, by phase", Unit::Seconds, billed_seconds.clone());
        r.register("capacity_units", "FC capacity units (CU), by phase", capacity_units.clone());
        r.register("instances", "Instances by state", instances.clone());
        let freeze_hazards = Family::<HazardLabels, Counter>::default();
        r.register("freeze_hazards", "Work a freeze cut off (README, Freeze hazards), by kind", freeze_hazards.clone());
        Metrics {
            registry: r,
            invocations,
            cold_starts,
            cold_start_seconds,
            freeze_seconds,
            thaw_seconds,
            cpu_seconds,
            billed_seconds,
            capacity_units,
            instances,
            freeze_hazards,
        }
    }
    /// One answered invocation.
    pub fn invocation(&self, function: &str, outcome: &str) {
        self.invocations.get_or_create(&OutcomeLabels { function: function.into(), outcome: outcome.into() }).inc();
    }

    /// One instance became ready after `took`.
    pub fn cold_start(&self, function: &str, took: Duration) {
        let l = FunctionLabel { function: function.into() };
        self.cold_starts.get_or_create(&l).inc();
        self.cold_start_seconds.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// The freeze and thaw histograms of `function`, looked up once (an instance keeps them,
    /// so its thaw path neither allocates a label nor searches the family).
    pub fn latencies(&self, function: &str) -> Latencies {
        let l = FunctionLabel { function: function.into() };
        Latencies { freeze: self.freeze_seconds.get_or_create(&l).clone(), thaw: self.thaw_seconds.get_or_create(&l).clone() }
    }

    /// One freeze hazard of `kind`.
    pub fn freeze_hazard(&self, function: &str, kind: &str) {
        self.freeze_hazards.get_or_create(&HazardLabels { function: function.into(), kind: kind.into() }).inc();
    }

    /// One ledger record.
    pub fn window(&self, r: &WindowRecord) {
        let l = PhaseLabels { function: r.function.clone(), phase: r.phase.as_str().into() };
        self.cpu_seconds.get_or_create(&l).inc_by(r.cpu_us as f64 / 1e6);
        self.billed_seconds.get_or_create(&l).inc_by(r.billed_ms as f64 / 1e3);
        self.capacity_units.get_or_create(&l).inc_by(r.cu.total);
    }

    /// The text exposition, with instance gauges from `instances` (function, state).
    pub fn render(&self, instances: impl IntoIterator<Item = (String, String)>) -> String {
        self.instances.clear();
        for (function, state) in instances {
            self.instances.get_or_create(&StateLabels { function, state }).inc();
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One function's freeze and thaw histograms (handles to the registered series).
#[derive(Debug, Clone)]
pub struct Latencies {
    freeze: Histogram,
    thaw: Histogram,
}

impl Latencies {
    /// One confirmed freeze.
    pub fn freeze(&self, took: Duration) {
        self.freeze.observe(took.as_secs_f64());
    }

    /// One confirmed thaw.
    pub fn thaw(&self, took: Duration) {
        self.thaw.observe(took.as_secs_f64());
    }
}

/// Raw latency samples for `fcsup bench` (off unless enabled: a serving fcsup keeps only the
/// histograms).
#[derive(Debug, Default)]
pub struct Samples {
    enabled: std::sync::atomic::AtomicBool,
    data: std::sync::Mutex<std::collections::HashMap<&'static str, Vec<Duration>>>,
}

impl Samples {
    /// Starts keeping samples.
    pub fn enable(&self) {
        self.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps one sample of `kind` when enabled.
    pub fn record(&self, kind: &'static str, d: Duration) {
        if self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            self.data.lock().expect("samples").entry(kind).or_default().push(d);
        }
    }

    /// Takes the samples of `kind` kept so far.
    pub fn take(&self, kind: &'static str) -> Vec<Duration> {
        self.data.lock().expect("samples").remove(kind).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_the_node_label_when_given() {
        let m = Metrics::for_node("n\"1");
        m.invocation("f", "success");
        m.cold_start("f", Duration::from_millis(3));
        let text = m.render([("f".to_string(), "frozen".to_string())]);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert!(series.len() > 5, "{text}");
        assert!(series.iter().all(|l| l.contains(r#"node="n\"1""#)), "{text}");
        let plain = Metrics::default().render([("f".to_string(), "frozen".to_string())]);
        assert!(!plain.contains("node="), "{plain}");
    }
}
