//! Making real instances: what every instance of one supervisor shares to start (the cgroup
//! root, network namespaces made ahead, the root filesystem, the isolation settings, where
//! output goes), and what it reports to (ledger, metrics, samples).

use std::sync::Arc;
use std::time::Instant;

use super::kernel::InsideContext;
use super::{hooks, us, Call, Instance, Sandboxed, Spawned, StartError, StartTrace};
use crate::billing::{Ledger, WindowRecord};
use crate::cgroup::{CgroupRoot, Limits};
use crate::config::Function;
use crate::image::registry::RegistryOptions;
use crate::image::Images;
use crate::logs::{Echo, InstanceLog, LogFiles};
use crate::metrics::{Latencies, Metrics, Samples};
use crate::oci::bundle::BundleConfig;
use crate::oci::grant::Granted;
use crate::oci::instance_hooks::InstanceHooks;
use crate::sandbox::{self, ImageRoot, ImageRoots, Isolation, NetnsPool, RootTemplate, SandboxError, SandboxSpec};

/// Where a custom container without web server mode finds its event (FC 2.0).
pub const EVENT_VARIABLE: &str = "FC_CUSTOM_CONTAINER_EVENT";

/// Where instances account for what they used: billing records, Prometheus metrics and the
/// bench's raw samples.
#[derive(Debug)]
pub struct Reporting {
    ledger: Arc<Ledger>,
    metrics: Metrics,
    samples: Samples,
    hazards: crate::hazards::Totals,
}

impl Reporting {
    /// Reports to `ledger`, with fresh metrics (labelled with the ledger's node) and samples.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        let metrics = ledger.node().map_or_else(Metrics::default, Metrics::for_node);
        Reporting { ledger, metrics, samples: Samples::default(), hazards: crate::hazards::Totals::default() }
    }

    /// The billing ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The bench's raw latency samples.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Freeze hazards per function (`fcsup report`).
    pub fn hazards(&self) -> &crate::hazards::Totals {
        &self.hazards
    }

    /// A closed billing window: into the metrics and the ledger.
    pub(super) fn window(&self, r: WindowRecord) {
        self.metrics.window(&r);
        self.ledger.record(r);
    }

    /// A function's freeze/thaw histograms.
    pub(super) fn latencies(&self, function: &str) -> Latencies {
        self.metrics.latencies(function)
    }
}

/// Starts instances on the kernel `K` (real ones: [`Launcher`]; unit tests start fakes).
pub trait Launch<K: super::Kernel>: Send + Sync + std::fmt::Debug {
    /// Starts an instance's process; it needs [`Instance::boot`] next, or, when it is started
    /// for one `call` (a custom container without web server mode), [`Instance::run_once`].
    fn launch(&self, function: Arc<Function>, provisioned: bool, call: Option<&Call>) -> Result<Arc<Instance<K>>, StartError>;
}

/// Starts real instances: a cgroup with the function's limits, a sandboxed process in it.
#[derive(Debug)]
pub struct Launcher {
    cgroups: CgroupRoot,
    netns: Arc<NetnsPool>,
    root_template: RootTemplate,
    isolation: Isolation,
    echo: Option<Arc<Echo>>,
    log_files: LogFiles,
    reporting: Arc<Reporting>,
    images: Images,
    /// Custom containers' roots, made ahead of their starts.
    image_roots: Arc<ImageRoots>,
    /// The CDI specs devices are granted from (re-read on reload).
    cdi: std::sync::RwLock<Arc<crate::oci::cdi::Registry>>,
    /// Where instances with OCI hooks get their bundle directory.
    bundle_dir: std::path::PathBuf,
    /// Instances' `poststop` hooks still running.
    poststops: Arc<crate::oci::instance_hooks::Poststops>,
}

impl Launcher {
    /// A launcher under `cgroups`, its instances rooted at `root_template`, isolated by
    /// `isolation`, their output echoed (when `echo`) and written to `log_files`.
    pub fn new(
        cgroups: CgroupRoot,
        netns: Arc<NetnsPool>,
        root_template: RootTemplate,
        isolation: Isolation,
        echo: Option<Arc<Echo>>,
        log_files: LogFiles,
        reporting: Arc<Reporting>,
    ) -> Self {
        Launcher {
            cgroups,
            netns,
            root_template,
            isolation,
            echo,
            log_files,
            reporting,
            images: Images::new(crate::image::DEFAULT_DIR, RegistryOptions::default()),
            image_roots: Arc::default(),
            cdi: std::sync::RwLock::new(Arc::new(crate::oci::cdi::Registry::default())),
            bundle_dir: std::env::temp_dir(),
            poststops: Arc::default(),
        }
    }

    /// Puts instances' OCI bundles under `dir` (private to the supervisor; made if missing).
    pub fn with_bundle_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.bundle_dir = dir;
        self
    }

    /// The OCI hooks of instance `id` with `spec`, and their bundle.
    fn instance_hooks(&self, id: &str, spec: &SandboxSpec, granted: &Granted) -> Result<InstanceHooks, StartError> {
        use std::os::unix::fs::DirBuilderExt;
        let failed = |m: String| StartError::Sandbox(SandboxError::Hooks(m));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.bundle_dir)
            .map_err(|e| failed(format!("create {}: {e}", self.bundle_dir.display())))?;
        // The hooks read NVIDIA's variables from here: only those the legacy hook's checks
        // passed, never the image's own (which could ask for MIG devices or other GPUs).
        let nvidia = |k: &str| k.starts_with("NVIDIA_") || k == "CUDA_VERSION";
        let mut env: Vec<String> = spec.env.iter().filter(|(k, _)| !nvidia(k)).map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(granted.bundle_env.iter().cloned());
        let config = BundleConfig {
            root: std::path::PathBuf::from(if spec.image.is_some() { sandbox::IMAGE_ROOT_AT } else { "/" }),
            args: spec.argv.clone(),
            env,
            cwd: spec.image.as_ref().map_or_else(|| "/code".into(), |i| i.working_dir.clone().into()),
            uid: spec.image.as_ref().map_or(0, |i| i.user.0),
            gid: spec.image.as_ref().map_or(0, |i| i.user.1),
            hooks: granted.hooks.clone(),
            ..BundleConfig::default()
        };
        InstanceHooks::prepare(&self.bundle_dir, id, config).map_err(failed)
    }

    /// Reads CDI specs from `dirs` (lowest priority first); a bad spec is logged and skipped.
    pub fn load_cdi(&self, dirs: &[std::path::PathBuf]) {
        let registry = crate::oci::cdi::Registry::load(dirs);
        for e in registry.errors() {
            tracing::warn!("CDI: {e}");
        }
        *self.cdi.write().expect("cdi") = Arc::new(registry);
    }

    /// The CDI specs in use.
    pub fn cdi(&self) -> Arc<crate::oci::cdi::Registry> {
        self.cdi.read().expect("cdi").clone()
    }

    /// Keeps custom containers' images in a store under `dir` (default
    /// [`crate::image::DEFAULT_DIR`]), pulled with `registry`'s credentials and insecure
    /// registries.
    pub fn with_image_cache(mut self, dir: &std::path::Path, registry: RegistryOptions) -> Self {
        self.images = Images::new(dir, registry);
        self
    }

    /// Tries the pulls that failed again, for `functions` (a reload). Blocking.
    pub fn retry_images(&self, functions: &[Function]) {
        self.images.retry_failed();
        self.prepare_images(functions);
    }

    /// Resolves the images of `functions` now (importing local sources into the store), so
    /// the first start does not pay for it; a function whose image fails is logged and keeps
    /// failing its starts with the reason, while the others serve.
    pub fn prepare_images(&self, functions: &[Function]) {
        for f in functions {
            if let Some(c) = &f.container {
                let t0 = Instant::now();
                match self.images.get(&c.image) {
                    Ok(image) => {
                        tracing::info!(function = %f.name, image = %c.image, digest = %image.manifest_digest, ms = t0.elapsed().as_millis(), "image ready");
                        // The first start's root, made ahead too.
                        self.image_roots.prepare(&image.layers, f.disk_mb, self.isolation.ids.clone());
                    }
                    Err(e) => tracing::error!(function = %f.name, "image {} is not usable: {e}", c.image),
                }
            }
        }
    }

    /// What `function`'s instances are granted (`fcsup.devices`, `gpuConfig`).
    fn grant(&self, function: &Function) -> Result<Granted, StartError> {
        if function.devices.is_empty() && function.gpu.is_none() {
            return Ok(Granted::default());
        }
        Ok(crate::oci::grant::resolve(function, &self.cdi(), std::env::var_os("PATH").as_deref())?)
    }

    /// The sandbox spec of an instance `id` of `function`.
    fn spec(&self, function: &Function, id: &str, call: Option<&Call>) -> Result<SandboxSpec, SandboxError> {
        let mut spec = SandboxSpec {
            argv: function.command.clone(),
            env: Vec::new(),
            code_dir: function.code_dir.clone(),
            hostname: id.to_string(),
            tmp_size_mb: function.disk_mb,
            image: None,
            grants: sandbox::Grants::default(),
        };
        let Some(container) = &function.container else {
            spec.env = hooks::environment(function, id);
            return Ok(spec);
        };
        let image_error = |e: crate::image::ImageError| SandboxError::Image { reference: container.image.clone(), message: e.to_string() };
        let image = self.images.get(&container.image).map_err(image_error)?;
        let user = image.user_ids().map_err(image_error)?;
        spec.argv = container.argv(&image.config.entrypoint, &image.config.cmd);
        if spec.argv.is_empty() {
            return Err(SandboxError::Image {
                reference: container.image.clone(),
                message: "no command: the image has no Entrypoint or Cmd, and customContainerConfig has no entrypoint or command".into(),
            });
        }
        spec.env = hooks::container_environment(function, id, &image.config.env, user.0);
        if let Some(call) = call {
            // Checked to be text by the pool (see `run_once::event_text`).
            spec.env.push((EVENT_VARIABLE.into(), String::from_utf8_lossy(&call.body).into_owned()));
        }
        let wd = &image.config.working_dir;
        let working_dir = if wd.starts_with('/') { wd.clone() } else { format!("/{wd}") };
        spec.image = Some(ImageRoot { layers: image.layers.clone(), working_dir, user });
        Ok(spec)
    }

    /// Waits for the `poststop` hooks still running (blocking).
    pub fn wait_poststops(&self) {
        self.poststops.wait();
    }

    /// The root cgroup of every instance.
    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    /// Where instances report.
    pub fn reporting(&self) -> &Arc<Reporting> {
        &self.reporting
    }

    /// The echo of function output in fcsup's own, if on.
    pub fn echo(&self) -> Option<&Arc<Echo>> {
        self.echo.as_ref()
    }
}

impl Launch<Sandboxed> for Launcher {
    /// Creates the cgroup and starts the process (synchronous: a few hundred µs to a few
    /// ms). The instance then needs [`Instance::boot`].
    fn launch(&self, function: Arc<Function>, provisioned: bool, call: Option<&Call>) -> Result<Arc<Instance>, StartError> {
        let created = Instant::now();
        let id = instance_id();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "cpu is validated to FC's range of 0.05 to 16 vCPUs")]
        let cpu_millis = (function.cpu * 1000.0).round() as u64;
        let granted = self.grant(&function)?;
        let limits = Limits {
            memory_bytes: Some(function.memory_mb * 1024 * 1024),
            pids_max: Some(function.pids_max),
            cpu_millis: Some(cpu_millis),
            devices: crate::cgroup::DeviceRules::runc_default().with_granted(&granted.rules),
        };
        let mut spec = self.spec(&function, &id, call)?;
        apply_grant(&mut spec, &granted);
        // After the grant, which sets the spec's grants: the layers add theirs.
        let _layers = super::builtin::prepare(&function, &mut spec)?;
        let oci_hooks = if granted.has_hooks() { Some(self.instance_hooks(&id, &spec, &granted)?) } else { None };
        let cgroup = self.cgroups.create(&id, &limits)?;
        let cgroup_us = us(created.elapsed());
        let setup = |op: &'static str| move |source: std::io::Error| StartError::Sandbox(SandboxError::Setup { op: op.into(), source });
        let netns = match self.netns.take() {
            Ok(n) => n,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(setup("create a network namespace")(e));
            }
        };
        // Before the process starts, so the agent's first poll finds it.
        let runtime_api = match super::builtin::serve(&function, &netns, &id) {
            Ok(api) => api,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        let prepared = spec.image.as_ref().and_then(|i| self.image_roots.take(&i.layers, spec.tmp_size_mb));
        let mut before_start = oci_hooks.as_ref().map(|h| move |pid: i32| h.before_start(pid));
        let gate = before_start.as_mut().map(|g| g as &mut dyn FnMut(i32) -> Result<(), String>);
        let child = match sandbox::spawn(&spec, &self.root_template, netns, cgroup.dir_fd(), &cgroup.v1_procs_fds(), &self.isolation, prepared, gate)
        {
            Ok(c) => {
                if let Some(image) = &spec.image {
                    // The next start's root, off this one's path.
                    self.image_roots.prepare(&image.layers, spec.tmp_size_mb, self.isolation.ids.clone());
                }
                c
            }
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let exec_us = us(created.elapsed());
        let start_trace = StartTrace { cgroup_us, clone_us: exec_us.saturating_sub(us(child.clone_to_exec)), exec_us, ..StartTrace::default() };
        tracing::debug!(instance = %id, clone_to_exec_us = us(child.clone_to_exec), "spawned");
        let log = InstanceLog::new(
            &function.name,
            &id,
            self.echo.as_ref().map(|e| e.for_function(&function.name)),
            self.log_files.for_function(&function.name),
        );
        if let Some(h) = &oci_hooks {
            h.after_start(child.pid);
        }
        let (kernel, stdout, stderr) = Sandboxed::new(cgroup, child).map_err(setup("watch the instance's pidfd"))?;
        let mut kernel = kernel.with_hooks(oci_hooks, &self.poststops);
        if function.init_command.is_some() {
            let cwd = spec.image.as_ref().map_or_else(|| "/code".to_string(), |i| i.working_dir.clone());
            let user = spec.image.as_ref().map_or((0, 0), |i| i.user);
            kernel = kernel.with_inside(InsideContext { env: spec.env.clone(), cwd, user, isolation: self.isolation.clone() });
        }
        if let Some(call) = call {
            // All it prints is the call's, from its first line.
            log.begin(&call.request_id);
        }
        log.attach(stdout, stderr);
        Ok(Instance::new(function, Spawned { id, kernel, log, created, start_trace, runtime_api }, self.reporting.clone(), provisioned))
    }
}

/// Puts a grant's environment, nodes and binds into `spec`.
fn apply_grant(spec: &mut SandboxSpec, granted: &Granted) {
    for kv in &granted.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match spec.env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_string(),
            None => spec.env.push((k.to_string(), v.to_string())),
        }
    }
    spec.grants = granted.sandbox.clone();
}

/// An FC style instance id (also its cgroup's name): `c-<8 hex>-<8 hex>-<12 hex>`.
fn instance_id() -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("c-{}-{}-{}", &r[..8], &r[8..16], &r[16..28])
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_ids_have_fc_shape() {
        let i = super::instance_id();
        assert!(i.starts_with("c-") && i.len() == 2 + 8 + 1 + 8 + 1 + 12, "{i}");
        assert_ne!(i, super::instance_id());
    }
}
