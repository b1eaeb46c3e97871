//! Function Compute's capacity units (CU) and price (README, Billing), per ledger record.
//!
//! Active vCPU 1 CU per vCPU-second (idle vCPU 0); memory 0.15 CU per GB-second; disk 0.05 CU
//! per GB-second above the free 512 MB; 75 CU per 10,000 invocations (hooks are not
//! invocations); tier-1 price USD 0.000020 per CU. fcsup adds its own measured bill: the CPU
//! the cgroup really used, at the active vCPU rate.
//!
//! GPU functions add their `gpuMemorySize` GB × seconds, rounded up to the second as FC bills
//! GPU on-demand time: Tesla (and Ampere, which FC's price list does not name apart) 2.1 CU
//! active / 0.5 idle, Ada 1.5 / 0.25 (fc-spec §6).

use serde::{Deserialize, Serialize};

use crate::config::GpuType;

/// CU per active vCPU-second.
pub const CU_PER_VCPU_SECOND: f64 = 1.0;
/// CU per GB-second of memory.
pub const CU_PER_MEMORY_GB_SECOND: f64 = 0.15;
/// CU per GB-second of disk above [`FREE_DISK_MB`].
pub const CU_PER_DISK_GB_SECOND: f64 = 0.05;
/// Disk that is not billed.
pub const FREE_DISK_MB: u64 = 512;
/// CU per invocation (75 per 10,000).
pub const CU_PER_INVOCATION: f64 = 75.0 / 10_000.0;
/// CU per GB-second of GPU memory: (active, idle).
pub fn gpu_cu_per_gb_second(kind: GpuType) -> (f64, f64) {
    match kind {
        GpuType::Tesla | GpuType::Ampere => (2.1, 0.5),
        GpuType::Ada => (1.5, 0.25),
    }
}

/// Tier-1 price of one CU, USD.
pub const USD_PER_CU: f64 = 0.000_020;

/// A record's CU, by resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cu {
    /// Configured vCPU × billed seconds (0 while idle).
    pub vcpu: f64,
    /// Configured memory GB × billed seconds.
    pub memory: f64,
    /// Disk GB above 512 MB × billed seconds.
    pub disk: f64,
    /// Invocation charge.
    pub invocations: f64,
    /// GPU memory GB × billed seconds (whole seconds), at the active or idle GPU rate.
    #[serde(default)]
    pub gpu: f64,
    /// Sum.
    pub total: f64,
}

impl Cu {
    /// CU of a window of `billed_ms` with the function's configured resources; `active` is
    /// false for a provisioned instance's frozen time (idle vCPU is free).
    pub fn of(active: bool, vcpu: f64, memory_mb: u64, disk_mb: u64, billed_ms: u64, invocations: u32) -> Cu {
        let secs = billed_ms as f64 / 1000.0;
        let vcpu = if active { vcpu * secs * CU_PER_VCPU_SECOND } else { 0.0 };
        let memory = memory_mb as f64 / 1024.0 * secs * CU_PER_MEMORY_GB_SECOND;
        let disk = disk_mb.saturating_sub(FREE_DISK_MB) as f64 / 1024.0 * secs * CU_PER_DISK_GB_SECOND;
        let invocations = invocations as f64 * CU_PER_INVOCATION;
        Cu { vcpu, memory, disk, invocations, gpu: 0.0, total: vcpu + memory + disk + invocations }
    }

    /// Adds a GPU of `kind` with `memory_mb` over `billed_ms` (rounded up to the second).
    #[must_use]
    pub fn with_gpu(mut self, active: bool, kind: GpuType, memory_mb: u64, billed_ms: u64) -> Cu {
        let (on, idle) = gpu_cu_per_gb_second(kind);
        let secs = billed_ms.div_ceil(1000) as f64;
        self.gpu = memory_mb as f64 / 1024.0 * secs * if active { on } else { idle };
        self.total += self.gpu;
        self
    }

    /// Adds another record's CU.
    pub fn add(&mut self, o: &Cu) {
        self.vcpu += o.vcpu;
        self.memory += o.memory;
        self.disk += o.disk;
        self.invocations += o.invocations;
        self.gpu += o.gpu;
        self.total += o.total;
    }
}

/// CU of the CPU really used (fcsup's measured bill).
pub fn measured_cpu_cu(cpu_us: u64) -> f64 {
    cpu_us as f64 / 1e6 * CU_PER_VCPU_SECOND
}

/// USD for `cu` at the tier-1 price.
pub fn usd(cu: f64) -> f64 {
    cu * USD_PER_CU
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_of_one_vcpu_two_gb() {
        let c = Cu::of(true, 1.0, 2048, 512, 1000, 1);
        assert_eq!((c.vcpu, c.memory, c.disk), (1.0, 0.3, 0.0));
        assert!((c.total - 1.3075).abs() < 1e-12, "{c:?}");
        assert!((usd(c.total) - 0.00002615).abs() < 1e-12);
    }

    #[test]
    fn gpu_seconds_round_up_and_idle_is_cheaper() {
        // 16 GB of Tesla for 1.2 s: 2 s billed at 2.1.
        let c = Cu::of(true, 8.0, 32768, 512, 1200, 1).with_gpu(true, GpuType::Tesla, 16384, 1200);
        assert!((c.gpu - 16.0 * 2.0 * 2.1).abs() < 1e-9, "{c:?}");
        assert!((c.total - (c.vcpu + c.memory + c.invocations + c.gpu)).abs() < 1e-9);
        let idle = Cu::of(false, 8.0, 32768, 512, 10_000, 0).with_gpu(false, GpuType::Ada, 8192, 10_000);
        assert!((idle.gpu - 8.0 * 10.0 * 0.25).abs() < 1e-9, "{idle:?}");
    }

    #[test]
    fn idle_time_bills_memory_and_disk_only() {
        let c = Cu::of(false, 2.0, 1024, 10240, 10_000, 0);
        assert_eq!(c.vcpu, 0.0);
        assert!((c.memory - 1.5).abs() < 1e-12);
        assert!((c.disk - 9.5 * 10.0 * 0.05).abs() < 1e-12);
    }
}
