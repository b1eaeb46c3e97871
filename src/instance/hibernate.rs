//! GPU hibernation (`fcsup.gpuHibernateAfter`, beyond FC's peers): an instance idle that long
//! has its CUDA processes locked and checkpointed with NVIDIA's `cuda-checkpoint` (device
//! memory moved to host memory, the GPU released), then frozen again; the next request thaws
//! it, and its processes are restored and unlocked before the request is sent. The order is
//! CRIU's (notes/fc-platform.md §3): checkpointing a frozen process hangs, so the instance is
//! thawed for the checkpoint and frozen after it; restore comes after the thaw. A restore that
//! fails (no GPU memory to come back to) fails the request and replaces the instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{us, Instance, InvokeError, Kernel, Lifecycle};

/// NVIDIA's tool, found on `PATH`.
const TOOL: &str = "cuda-checkpoint";

/// How long one `cuda-checkpoint` call may take (a checkpoint copies device memory: seconds
/// per GPU).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cuda-checkpoint ARGS --pid PID`: its trimmed stdout, or why it failed.
async fn checkpoint_tool(args: &[&str], pid: i32) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(TOOL);
    cmd.args(args).arg("--pid").arg(pid.to_string()).kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(CALL_TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!("{TOOL} {} --pid {pid}: no answer within {CALL_TIMEOUT:?}", args.join(" "))),
        Ok(Err(e)) => Err(format!("{TOOL}: {e} (install NVIDIA's cuda-checkpoint, driver 570 or later)")),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(Ok(out)) => Err(format!(
            "{TOOL} {} --pid {pid}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect::<String>()
        )),
    }
}

impl<K: Kernel> Instance<K> {
    /// Whether it should hibernate now: a GPU function's instance, frozen with nothing
    /// admitted for at least `gpuHibernateAfter`, not hibernated yet.
    pub fn should_hibernate(&self) -> bool {
        let Some(after) = self.function.gpu_hibernate_after else { return false };
        let l = self.life.borrow();
        l.frozen() && l.admitted() == 0 && self.idle_for() >= after && self.gpu_hibernated.lock().expect("gpu").is_none()
    }

    /// Hibernates its GPU (see the module's doc); a failure leaves it frozen as it was.
    pub async fn hibernate(self: Arc<Self>) {
        let mut windows = self.power.lock().await;
        if !self.should_hibernate() {
            return;
        }
        let t0 = Instant::now();
        // Read while frozen: no process of it can exit and hand its pid to another meanwhile.
        let pids = self.kernel.pids();
        if self.kernel.thaw().await.is_err() {
            return;
        }
        self.transition(Lifecycle::thawed);
        let mut done = Vec::new();
        let mut failure = None;
        for pid in pids {
            // Only CUDA processes have a state, and only this instance's are touched (a pid
            // that left it since is skipped).
            if !self.owns(pid) || checkpoint_tool(&["--get-state"], pid).await.as_deref() != Ok("running") || !self.owns(pid) {
                continue;
            }
            let step = async {
                checkpoint_tool(&["--action", "lock"], pid).await?;
                checkpoint_tool(&["--action", "checkpoint"], pid).await
            };
            match step.await {
                Ok(_) => done.push(pid),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // Back as it was: what was checkpointed is restored before the freeze.
            tracing::warn!(instance = %self.id, "GPU hibernation failed: {e}");
            for pid in &done {
                let _ = checkpoint_tool(&["--action", "restore"], *pid).await;
                let _ = checkpoint_tool(&["--action", "unlock"], *pid).await;
            }
            done.clear();
        }
        match self.kernel.freeze().await {
            Ok(()) => {
                self.transition(Lifecycle::froze);
            }
            Err(e) => tracing::error!(instance = %self.id, "freeze after GPU hibernation failed: {e}"),
        }
        if !done.is_empty() {
            let now = self.reading();
            if let Some(frozen) = windows.hibernated(now) {
                self.record(vec![frozen]);
            }
            tracing::info!(function = %self.function.name, instance = %self.id, processes = done.len(), us = us(t0.elapsed()), "GPU hibernated");
        }
        // Not tried again until a request has thawed it.
        *self.gpu_hibernated.lock().expect("gpu") = Some(done);
    }

    /// Whether `pid` is still in this instance's cgroup (named by its id).
    fn owns(&self, pid: i32) -> bool {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        cgroups.lines().find_map(|l| l.strip_prefix("0::")).is_some_and(|p| p.trim_end().ends_with(&format!("/{}", self.id)))
    }

    /// After a thaw: restores and unlocks the hibernated processes' GPU memory.
    pub(super) async fn wake_gpu(&self) -> Result<(), InvokeError> {
        let pids = self.gpu_hibernated.lock().expect("gpu").take().unwrap_or_default();
        if pids.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        for pid in pids.iter().filter(|p| self.owns(**p)) {
            checkpoint_tool(&["--action", "restore"], *pid).await.map_err(InvokeError::GpuRestore)?;
            checkpoint_tool(&["--action", "unlock"], *pid).await.map_err(InvokeError::GpuRestore)?;
        }
        let took = t0.elapsed();
        self.reporting.samples().record("gpu_wake", took);
        tracing::info!(function = %self.function.name, instance = %self.id, us = us(took), "GPU woken");
        Ok(())
    }
}
