//! One instance's OCI hooks, each phase run when runc would run it (notes/gpu.md §2.3):
//! `prestart` and `createRuntime` in the supervisor's namespaces and `createContainer` in the
//! instance's mount namespace, while the assembled instance waits before its root becomes its
//! own (its image's root still at `/code`, the `root.path` of its bundle); `poststart` once
//! the function runs; `poststop` once the instance is gone. A failing start hook fails the
//! start; poststart and poststop failures are logged, as the runtime spec has them.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hooks;

use super::bundle::{Bundle, BundleConfig};
use super::hooks::{self, HookOptions, HookPhase};

/// `poststop` hooks still running (each on a thread of its own, off the async runtime): the
/// supervisor waits for them before it exits.
#[derive(Debug, Default)]
pub struct Poststops(std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>);

impl Poststops {
    /// Runs `hooks`' poststop on a thread of its own.
    pub fn spawn(&self, hooks: InstanceHooks) {
        let mut running = self.0.lock().expect("poststops");
        running.retain(|t| !t.is_finished());
        running.push(std::thread::spawn(move || hooks.after_stop()));
    }

    /// Waits for every poststop still running (blocking).
    pub fn wait(&self) {
        let running = std::mem::take(&mut *self.0.lock().expect("poststops"));
        for t in running {
            let _ = t.join();
        }
    }
}

/// An instance's hooks and the bundle they read.
#[derive(Debug)]
pub struct InstanceHooks {
    id: String,
    hooks: Hooks,
    bundle: Bundle,
    /// The instance's root as its mount namespace sees it while the hooks run.
    root: PathBuf,
    annotations: HashMap<String, String>,
}

impl InstanceHooks {
    /// Writes the bundle of instance `id` under `dir` (its `config.json` from `config`, whose
    /// `root` is where the hooks find the instance's root).
    pub fn prepare(dir: &Path, id: &str, config: BundleConfig) -> Result<InstanceHooks, String> {
        let bundle = Bundle::create(dir.join(id), &config.to_spec()).map_err(|e| e.to_string())?;
        Ok(InstanceHooks { id: id.to_string(), hooks: config.hooks, bundle, root: config.root, annotations: config.annotations })
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        self.bundle.path()
    }

    fn state(&self, phase: HookPhase, pid: Option<i32>) -> oci_spec::runtime::State {
        hooks::state(phase, &self.id, pid, self.bundle.path(), &self.annotations)
    }

    /// `prestart`, `createRuntime`, then `createContainer` (in the mount namespace of `pid`,
    /// the waiting init); the first failure is the error.
    pub fn before_start(&self, pid: i32) -> Result<(), String> {
        let host = HookOptions::new(self.bundle.path());
        for phase in [HookPhase::Prestart, HookPhase::CreateRuntime] {
            hooks::run_hooks(phase, phase.hooks(&self.hooks), &self.state(phase, Some(pid)), &host).map_err(|e| e.to_string())?;
        }
        let inside = HookPhase::CreateContainer;
        if !inside.hooks(&self.hooks).is_empty() {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("open the instance's mount namespace: {e}"))?;
            let opts = HookOptions::new(&self.root).in_mount_namespace(ns.as_fd());
            hooks::run_hooks(inside, inside.hooks(&self.hooks), &self.state(inside, Some(pid)), &opts).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// `poststart` (failures logged).
    pub fn after_start(&self, pid: i32) {
        let phase = HookPhase::Poststart;
        for e in hooks::run_hooks_all(phase, phase.hooks(&self.hooks), &self.state(phase, Some(pid)), &HookOptions::new(self.bundle.path())) {
            tracing::warn!(instance = %self.id, "{e}");
        }
    }

    /// `poststop` (failures logged), then the bundle is removed.
    pub fn after_stop(self) {
        let phase = HookPhase::Poststop;
        for e in hooks::run_hooks_all(phase, phase.hooks(&self.hooks), &self.state(phase, None), &HookOptions::new(self.bundle.path())) {
            tracing::warn!(instance = %self.id, "{e}");
        }
        if let Err(e) = self.bundle.remove() {
            tracing::warn!(instance = %self.id, "{e}");
        }
    }
}
