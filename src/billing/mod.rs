//! Billing: one ledger record per active window of an instance (thaw → freeze) and per hook,
//! with wall time, the CPU its cgroup used (`cpu.stat`), the window's peak memory, FC's billed
//! duration (1 ms granularity, rounded up) and FC's capacity units and price. Concurrent
//! requests on one instance share one window; provisioned (minimum) instances also get `idle`
//! records for their frozen time (README, Billing).

mod ledger;
pub mod price;
pub mod report;
pub mod windows;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::{CpuStat, MemorySource};
use crate::config::Function;
pub use ledger::{Ledger, SYNC_INTERVAL};
use price::Cu;

/// The lifecycle phase a window is billed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Start and Initializer.
    Initialize,
    /// Requests.
    Invoke,
    /// Requests ending with the PreFreeze hook.
    PreFreeze,
    /// PreStop hook.
    PreStop,
    /// A provisioned instance's frozen time (billed at idle rates).
    Idle,
}

impl Phase {
    /// The name used in the ledger and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initialize => "initialize",
            Phase::Invoke => "invoke",
            Phase::PreFreeze => "pre-freeze",
            Phase::PreStop => "pre-stop",
            Phase::Idle => "idle",
        }
    }
}

/// Where an instance spent idle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleTier {
    /// Its cgroup frozen.
    Frozen,
    /// Frozen, with its GPU memory checkpointed to host memory and the GPU released.
    GpuHibernated,
}

/// FC's resource modes (`resourceMode` in its request metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ResourceMode {
    /// Started by a request, billed while active.
    #[default]
    OnDemand,
    /// A minimum instance, billed from start to release.
    Provision,
}

/// What was measured over one window.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Wall time.
    pub wall: Duration,
    /// CPU the cgroup used.
    pub cpu: CpuStat,
    /// Peak memory, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Where the memory figure comes from.
    pub memory_source: MemorySource,
}

/// One ledger line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Instance id.
    pub instance: String,
    /// Function name.
    pub function: String,
    /// Phase.
    pub phase: Phase,
    /// OnDemand or Provision.
    #[serde(default)]
    pub resource_mode: ResourceMode,
    /// The window that started the instance (cold start + Initializer).
    #[serde(default)]
    pub cold_start: bool,
    /// Requests served in the window.
    pub request_ids: Vec<String>,
    /// Invocations billed (requests; hooks count none).
    #[serde(default)]
    pub invocations: u32,
    /// Start, ms since the epoch.
    pub start_ms: u64,
    /// Wall time, µs.
    pub wall_us: u64,
    /// CPU used by the cgroup, µs (user + system).
    pub cpu_us: u64,
    /// User CPU, µs.
    pub cpu_user_us: u64,
    /// System CPU, µs.
    pub cpu_system_us: u64,
    /// Peak memory in the window, bytes, where the host reports it.
    pub peak_memory_bytes: Option<u64>,
    /// Where `peak_memory_bytes` comes from.
    #[serde(default)]
    pub memory_source: MemorySource,
    /// FC's billed duration: wall time rounded up to the ms.
    pub billed_ms: u64,
    /// Configured memory, MB.
    pub memory_mb: u64,
    /// Configured vCPUs.
    pub vcpu: f64,
    /// Configured disk, MB.
    #[serde(default)]
    pub disk_mb: u64,
    /// The GPU type, for a GPU function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<crate::config::GpuType>,
    /// `gpuMemorySize`, MB, for a GPU function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mb: Option<u64>,
    /// For idle time, where the instance spent it: frozen, or frozen with its GPU memory
    /// checkpointed to host memory (`gpu-hibernated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_tier: Option<IdleTier>,
    /// FC's capacity units for the window.
    #[serde(default)]
    pub cu: Cu,
    /// The CPU really used, in CU (fcsup's measured bill).
    #[serde(default)]
    pub measured_cpu_cu: f64,
    /// `cu.total` at the tier-1 price, USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// The node whose fcsup made the record (`--node-name`), so bills merged from several
    /// nodes can be split by node; absent in records written before nodes were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The record's own identity, random, given by the ledger that first writes it: the same
    /// record reached twice (one ledger file given twice, a node asked twice) is billed once.
    /// Absent in older records (those are told apart by their content, see [`report::merge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl WindowRecord {
    /// Builds a record, pricing it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        f: &Function,
        instance: &str,
        phase: Phase,
        mode: ResourceMode,
        cold_start: bool,
        request_ids: Vec<String>,
        start_ms: u64,
        usage: Usage,
    ) -> Self {
        let wall_us = micros(usage.wall);
        let billed_ms = wall_us.div_ceil(1000);
        // Saturates: 2^32 requests cannot share one window.
        let invocations = if matches!(phase, Phase::Invoke | Phase::PreFreeze) { u32::try_from(request_ids.len()).unwrap_or(u32::MAX) } else { 0 };
        let active = phase != Phase::Idle;
        let mut cu = Cu::of(active, f.cpu, f.memory_mb, f.disk_mb, billed_ms, invocations);
        if let Some(g) = &f.gpu {
            cu = cu.with_gpu(active, g.kind, g.memory_mb, billed_ms);
        }
        WindowRecord {
            instance: instance.into(),
            function: f.name.clone(),
            phase,
            resource_mode: mode,
            cold_start,
            request_ids,
            invocations,
            start_ms,
            wall_us,
            cpu_us: usage.cpu.usage_usec,
            cpu_user_us: usage.cpu.user_usec,
            cpu_system_us: usage.cpu.system_usec,
            peak_memory_bytes: usage.peak_memory_bytes,
            memory_source: usage.memory_source,
            billed_ms,
            memory_mb: f.memory_mb,
            vcpu: f.cpu,
            disk_mb: f.disk_mb,
            gpu_type: f.gpu.as_ref().map(|g| g.kind),
            gpu_memory_mb: f.gpu.as_ref().map(|g| g.memory_mb),
            idle_tier: (phase == Phase::Idle).then_some(IdleTier::Frozen),
            measured_cpu_cu: price::measured_cpu_cu(usage.cpu.usage_usec),
            cost_usd: price::usd(cu.total),
            cu,
            node: None,
            id: None,
        }
    }
}

/// `d` in whole microseconds; saturates (u64 µs is 584,000 years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
