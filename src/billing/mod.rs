//! The phase ledger: one record per active window of an instance (thaw → freeze) and per
//! hook, with wall time, the CPU its cgroup used (`cpu.stat`) and FC's billed duration
//! (1 ms granularity, rounded up). Concurrent requests on one instance share one window.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::cgroup::CpuStat;
use crate::config::Function;

/// The lifecycle phase a window is billed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One ledger line.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRecord {
    /// Instance id.
    pub instance: String,
    /// Function name.
    pub function: String,
    /// Phase.
    pub phase: Phase,
    /// Requests served in the window.
    pub request_ids: Vec<String>,
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
    /// Peak memory of the instance, bytes, where the host reports it.
    pub peak_memory_bytes: Option<u64>,
    /// FC's billed duration: wall time rounded up to the ms.
    pub billed_ms: u64,
    /// Configured memory, MB.
    pub memory_mb: u64,
    /// Configured vCPUs.
    pub vcpu: f64,
}

impl WindowRecord {
    /// Builds a record.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        f: &Function,
        instance: &str,
        phase: Phase,
        request_ids: Vec<String>,
        start_ms: u64,
        wall: Duration,
        cpu: CpuStat,
        peak_memory_bytes: Option<u64>,
    ) -> Self {
        let wall_us = wall.as_micros() as u64;
        WindowRecord {
            instance: instance.into(),
            function: f.name.clone(),
            phase,
            request_ids,
            start_ms,
            wall_us,
            cpu_us: cpu.usage_usec,
            cpu_user_us: cpu.user_usec,
            cpu_system_us: cpu.system_usec,
            peak_memory_bytes,
            billed_ms: wall_us.div_ceil(1000),
            memory_mb: f.memory_mb,
            vcpu: f.cpu,
        }
    }
}

/// The ledger: kept in memory for the admin API and appended to a JSON-lines file.
#[derive(Debug, Default)]
pub struct Ledger {
    records: Mutex<Vec<WindowRecord>>,
    file: Mutex<Option<File>>,
}

impl Ledger {
    /// A ledger appending to `path` (created if missing, never rewritten).
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                Some(File::options().create(true).append(true).open(p)?)
            }
            None => None,
        };
        Ok(Ledger { records: Mutex::default(), file: Mutex::new(file) })
    }

    /// Appends one record.
    pub fn record(&self, r: WindowRecord) {
        if let Some(f) = self.file.lock().expect("ledger").as_mut() {
            if let Ok(mut line) = serde_json::to_vec(&r) {
                line.push(b'\n');
                let _ = f.write_all(&line);
            }
        }
        self.records.lock().expect("ledger").push(r);
    }

    /// Records matching the filters.
    pub fn query(&self, function: Option<&str>, instance: Option<&str>, since_ms: Option<u64>) -> Vec<WindowRecord> {
        self.records
            .lock()
            .expect("ledger")
            .iter()
            .filter(|r| function.is_none_or(|f| r.function == f))
            .filter(|r| instance.is_none_or(|i| r.instance == i))
            .filter(|r| since_ms.is_none_or(|s| r.start_ms >= s))
            .cloned()
            .collect()
    }
}
