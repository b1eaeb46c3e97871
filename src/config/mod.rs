//! The function configuration: a Serverless Devs `s.yaml` (functions under
//! `resources.<name>.props`, FC 3.0's `fc3` component, or FC 2.0's `fc` component under
//! `services:`), or a plain list of such `props`, plus fcsup's own `fcsup:` keys.
//!
//! A file is read as `s` reads it: its `${...}` variables resolved ([`vars`]), resources of
//! other components skipped, FC 2.0 props mapped to FC 3.0's ([`fc2`]), a `code` package
//! unpacked ([`package`]). Parsing is strict about types and [`validate`] checks ranges with
//! FC's limits, so a bad file fails at start naming the file and the key.

mod fc2;
pub mod package;
mod validate;
mod vars;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

pub use validate::validate;

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value outside what FC allows.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `resources.demo.props.memorySize`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Supervisor-wide settings under the file's top-level `fcsup:` key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalExt {
    /// Instance cap across all functions (FC's per-region cap; default 100).
    pub max_instances: Option<usize>,
    /// Where `code` packages (`.zip`, `.jar`) are unpacked, relative to the file (default
    /// [`package::DEFAULT_DIR`]).
    pub code_cache: Option<String>,
}

/// One function's `props` (FC 3.0 names; unknown FC keys are accepted and ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Props {
    /// `functionName` (defaults to the resource key).
    pub function_name: Option<String>,
    /// `runtime` (`custom`, `custom.debian10/11/12`, `custom-container`, or a built-in
    /// runtime: `python3.x`, `nodejsNN`, `go1`).
    pub runtime: Option<String>,
    /// `region`, passed to the instance as `FC_REGION`.
    pub region: Option<String>,
    /// `code`: the code directory, relative to the file.
    pub code: Option<String>,
    /// `handler` (`index.handler` for built-in runtimes; meaningless for custom runtimes,
    /// passed through).
    pub handler: Option<String>,
    /// `layers`: FC layer ARNs, merged read-only at `/opt` (first one wins, as FC merges them).
    #[serde(default)]
    pub layers: Vec<String>,
    /// `memorySize` in MB.
    pub memory_size: Option<u64>,
    /// `cpu` in vCPUs.
    pub cpu: Option<f64>,
    /// `diskSize` in MB (size of `/tmp`).
    pub disk_size: Option<u64>,
    /// `timeout` in seconds.
    pub timeout: Option<u64>,
    /// `instanceConcurrency`.
    pub instance_concurrency: Option<u32>,
    /// `environmentVariables`.
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
    /// `customRuntimeConfig`.
    pub custom_runtime_config: Option<CustomRuntimeConfig>,
    /// `customContainerConfig` (runtime `custom-container`).
    pub custom_container_config: Option<CustomContainerConfig>,
    /// `instanceLifecycleConfig`.
    pub instance_lifecycle_config: Option<LifecycleConfig>,
    /// `gpuConfig`: refused for now (fcsup does not wire GPUs into instances yet).
    pub gpu_config: Option<GpuConfig>,
    /// `asyncInvokeConfig` (FC's PutAsyncInvokeConfig, kept with the function).
    pub async_invoke_config: Option<AsyncInvokeConfig>,
    /// fcsup's own settings for this function.
    pub fcsup: Option<FunctionExt>,
}

/// `gpuConfig` (FC 3.0's GPUConfig).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuConfig {
    /// `fc.gpu.tesla.1`, `fc.gpu.ampere.1` or `fc.gpu.ada.1`.
    pub gpu_type: Option<String>,
    /// GPU memory, MB: a multiple of 1024.
    pub gpu_memory_size: Option<u64>,
}

/// `asyncInvokeConfig`: how Async invocations are retried.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncInvokeConfig {
    /// Retries after a function error (FC: 0 to 8, default 3).
    pub max_async_retry_attempts: Option<u32>,
    /// Seconds an event may wait (throttled) before it is dropped (default 86400).
    pub max_async_event_age_in_seconds: Option<u64>,
    /// `destinationConfig`: where a finished invocation's record is sent.
    pub destination_config: Option<DestinationConfig>,
}

/// `asyncInvokeConfig.destinationConfig` (FC 3.0's DestinationConfig).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationConfig {
    /// After a success.
    pub on_success: Option<DestinationRef>,
    /// After the last failed attempt, or when the event expired.
    pub on_failure: Option<DestinationRef>,
}

/// `{destination: acs:fc:<region>:<account>:functions/<name>}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DestinationRef {
    /// The destination's ARN.
    pub destination: Option<String>,
}

/// An Async destination: another function of the same file, invoked asynchronously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The function invoked.
    pub function: String,
    /// Region of the ARN as written (used again in `functionArn` of the record).
    pub region: String,
    /// Account of the ARN as written.
    pub account: String,
}

/// `customRuntimeConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomRuntimeConfig {
    /// Start command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Start arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Listening port (default 9000).
    pub port: Option<u16>,
    /// `healthCheckConfig`.
    pub health_check_config: Option<HealthCheckConfig>,
}

/// `customContainerConfig` (FC 3.0; the cloud-only acceleration and registry fields are
/// accepted and ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomContainerConfig {
    /// The image: `oci:DIR[:TAG]`, `docker-archive:FILE[:NAME:TAG]`, or a registry reference.
    pub image: Option<String>,
    /// Overrides the image's `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Overrides the image's `Cmd`.
    pub command: Option<Vec<String>>,
    /// Listening port (default 9000).
    pub port: Option<u16>,
    /// `healthCheckConfig`.
    pub health_check_config: Option<HealthCheckConfig>,
    /// FC 2.0's `webServerMode` (default true); `false` runs the container once per event.
    pub web_server_mode: Option<bool>,
}

/// `healthCheckConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckConfig {
    /// Path probed with GET.
    pub http_get_url: Option<String>,
    /// Seconds before the first probe.
    pub initial_delay_seconds: Option<u64>,
    /// Seconds between probes.
    pub period_seconds: Option<u64>,
    /// Seconds per probe.
    pub timeout_seconds: Option<u64>,
    /// Failures before unhealthy.
    pub failure_threshold: Option<u32>,
    /// Successes before healthy again.
    pub success_threshold: Option<u32>,
}

/// `instanceLifecycleConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleConfig {
    /// Initializer hook.
    pub initializer: Option<HookConfig>,
    /// PreStop hook.
    pub pre_stop: Option<HookConfig>,
    /// PreFreeze hook (FC 2.0; kept as an extension).
    pub pre_freeze: Option<HookConfig>,
}

/// One lifecycle hook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookConfig {
    /// Handler name; an empty string disables the hook.
    pub handler: Option<String>,
    /// The execute-instruction Initializer: a command run in the instance (GPU functions
    /// only, instead of `handler`).
    pub command: Option<Vec<String>>,
    /// Seconds (Serverless Devs default 3).
    pub timeout: Option<u64>,
}

/// fcsup's per-function settings (`props.fcsup`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionExt {
    /// Instances started at boot and kept frozen.
    pub min_instances: Option<usize>,
    /// Instance cap for this function.
    pub max_instances: Option<usize>,
    /// Seconds idle before an instance is reclaimed (default 180).
    pub idle_timeout: Option<u64>,
    /// Seconds the start command has to listen on its port (default 120).
    pub start_timeout: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on stop (default 3).
    pub stop_grace: Option<u64>,
    /// Task limit per instance (default 1024).
    pub pids_max: Option<u64>,
    /// Devices granted to every instance, by CDI name (`vendor.com/class=name`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// The host GPUs a `gpuConfig` function gets: `all` (default) or a list of indices or
    /// UUIDs.
    pub gpus: Option<GpuSelection>,
    /// Seconds idle before a GPU instance's device memory is checkpointed to host memory with
    /// `cuda-checkpoint` and its GPU released (off by default).
    pub gpu_hibernate_after: Option<u64>,
    /// A built-in runtime's interpreter on the host: a path, or a name looked up in
    /// `/usr/local/bin`, `/usr/bin`, `/bin` (default `python3` or `node`).
    pub interpreter: Option<String>,
    /// Where `layers:` are found, laid out `<layerDir>/<layer name>/<version>/` (relative to
    /// the file; default `layers`).
    pub layer_dir: Option<String>,
    /// What a freeze hazard does: `report` (default), `fail` or `off` (README, Freeze hazards).
    pub freeze_hazards: Option<FreezeHazards>,
}

/// `fcsup.freezeHazards`: what fcsup does when a freeze cuts off work an invocation left
/// running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeHazards {
    /// Report it (instance log, admin API, metrics, `fcsup report`).
    #[default]
    Report,
    /// Report it, and fail the invocation whose answer preceded the freeze (for CI).
    Fail,
    /// Look at nothing.
    Off,
}

/// Which host GPUs: `all` or a list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum GpuSelection {
    /// `all`.
    Keyword(String),
    /// Indices (`0`) or UUIDs (`GPU-…`).
    List(Vec<GpuId>),
}

/// One GPU: its index or its UUID.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum GpuId {
    /// Index, as `nvidia-smi` numbers them.
    Index(u32),
    /// `GPU-<uuid>` (or `MIG-…`).
    Name(String),
}

impl std::fmt::Display for GpuId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuId::Index(i) => write!(f, "{i}"),
            GpuId::Name(n) => f.write_str(n),
        }
    }
}

/// A hook with its resolved timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// Handler string (sent in headers).
    pub handler: String,
    /// Its timeout.
    pub timeout: Duration,
}

/// `healthCheckConfig` with FC's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Path probed with GET; 200 ≤ status < 400 passes.
    pub path: String,
    /// Wait after the Initializer before the first probe.
    pub initial_delay: Duration,
    /// Between probes (only while the instance is thawed).
    pub period: Duration,
    /// Per probe.
    pub timeout: Duration,
    /// Consecutive failures that make the instance unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that make it healthy again.
    pub success_threshold: u32,
}

/// What a `custom-container` function runs: its image and FC's overrides of the image's
/// process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The image reference (local sources' relative paths resolved against the file).
    pub image: String,
    /// FC's `entrypoint`: replaces the image's `Entrypoint` (and, as Docker does, its `Cmd`
    /// unless `command` is given too).
    pub entrypoint: Option<Vec<String>>,
    /// FC's `command`: replaces the image's `Cmd`.
    pub command: Option<Vec<String>>,
    /// FC 2.0's `webServerMode: false`: no HTTP server; each event runs the container once,
    /// the event in `FC_CUSTOM_CONTAINER_EVENT`, and its exit status is the outcome.
    pub per_event: bool,
}

impl Container {
    /// The argv of an instance of `image_entrypoint`/`image_cmd` with FC's overrides applied.
    pub fn argv(&self, image_entrypoint: &[String], image_cmd: &[String]) -> Vec<String> {
        let entrypoint = self.entrypoint.as_deref().unwrap_or(image_entrypoint);
        let cmd = match (&self.command, &self.entrypoint) {
            (Some(c), _) => c.as_slice(),
            (None, Some(_)) => &[],
            (None, None) => image_cmd,
        };
        entrypoint.iter().chain(cmd).cloned().collect()
    }
}

/// One function, resolved and validated: what the pool and instances work from.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Name used in URLs.
    pub name: String,
    /// Runtime string.
    pub runtime: String,
    /// Region (for `FC_REGION`).
    pub region: String,
    /// Absolute code directory (empty for a custom container).
    pub code_dir: PathBuf,
    /// The image a `custom-container` function runs from.
    pub container: Option<Container>,
    /// CRC-64 of the code (see [`code_checksum`]): `x-fc-code-checksum`, and how a reload sees
    /// that the code changed.
    pub code_checksum: String,
    /// Handler string.
    pub handler: String,
    /// Start command + args.
    pub command: Vec<String>,
    /// Port the function listens on.
    pub port: u16,
    /// MB.
    pub memory_mb: u64,
    /// vCPUs.
    pub cpu: f64,
    /// MB of `/tmp`.
    pub disk_mb: u64,
    /// Invocation timeout.
    pub timeout: Duration,
    /// Requests one instance takes at once.
    pub concurrency: usize,
    /// User environment.
    pub env: BTreeMap<String, String>,
    /// Initializer.
    pub initializer: Option<Hook>,
    /// PreStop.
    pub pre_stop: Option<Hook>,
    /// PreFreeze.
    pub pre_freeze: Option<Hook>,
    /// Health check.
    pub health_check: Option<HealthCheck>,
    /// Retries of an Async invocation after a function error.
    pub async_retries: u32,
    /// How long an Async invocation may wait before it is dropped.
    pub async_max_age: Duration,
    /// Where a succeeded Async invocation's record goes.
    pub async_on_success: Option<Destination>,
    /// Where a failed or expired Async invocation's record goes.
    pub async_on_failure: Option<Destination>,
    /// Minimum instances.
    pub min_instances: usize,
    /// Maximum instances of this function.
    pub max_instances: Option<usize>,
    /// Idle reclaim.
    pub idle_timeout: Duration,
    /// Readiness deadline.
    pub start_timeout: Duration,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// Task limit.
    pub pids_max: u64,
    /// The execute-instruction Initializer (GPU functions; `initializer` is then `None`).
    pub init_command: Option<InitCommand>,
    /// `gpuConfig`: host GPUs granted to each instance.
    pub gpu: Option<Gpu>,
    /// Devices granted to each instance by CDI name (`fcsup.devices`).
    pub devices: Vec<String>,
    /// Idle time after which a GPU instance is hibernated (`fcsup.gpuHibernateAfter`).
    pub gpu_hibernate_after: Option<Duration>,
    /// A built-in runtime (`python3.10`, `nodejs18`, `go1`, …): the agent pulls its work over
    /// FC's runtime API instead of serving HTTP.
    pub builtin: Option<Builtin>,
    /// The layers' directories, in the order configured (the first one wins at `/opt`).
    pub layers: Vec<PathBuf>,
    /// `fcsup.freezeHazards`.
    pub freeze_hazards: FreezeHazards,
}

/// The language of a built-in runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `python3`, `python3.9`, `python3.10`, `python3.12`: fcsup's Python agent.
    Python,
    /// `nodejs8` … `nodejs20`: fcsup's Node.js agent.
    Node,
    /// `go1`: the code is a binary built with aliyun's fc-runtime-go-sdk, named by `handler`.
    Go,
}

/// A built-in runtime function's runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtin {
    /// Its language.
    pub language: Language,
    /// The interpreter (`fcsup.interpreter`, or `python3` / `node`): a path, or a name looked
    /// up on the host when an instance starts. `None` for Go, whose code is the program.
    pub interpreter: Option<String>,
}

impl Language {
    /// The language of FC runtime `name`, when it is a built-in runtime fcsup runs.
    pub fn of_runtime(name: &str) -> Option<Language> {
        match name {
            "python3" | "python3.9" | "python3.10" | "python3.12" => Some(Language::Python),
            "nodejs8" | "nodejs10" | "nodejs12" | "nodejs14" | "nodejs16" | "nodejs18" | "nodejs20" => Some(Language::Node),
            "go1" => Some(Language::Go),
            _ => None,
        }
    }
}

/// FC's execute-instruction Initializer: a command run once in each new instance before it
/// takes requests; exit 0 is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitCommand {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// FC's GPU card families (`gpuType`), with what FC bills for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuType {
    /// `fc.gpu.tesla.1` (Tesla T4, 16 GB).
    Tesla,
    /// `fc.gpu.ampere.1` (Ampere A10, 24 GB).
    Ampere,
    /// `fc.gpu.ada.1` (Ada, 48 GB).
    Ada,
}

impl GpuType {
    /// From FC's `gpuType` name.
    pub fn from_fc(name: &str) -> Option<GpuType> {
        match name {
            "fc.gpu.tesla.1" => Some(GpuType::Tesla),
            "fc.gpu.ampere.1" => Some(GpuType::Ampere),
            "fc.gpu.ada.1" => Some(GpuType::Ada),
            _ => None,
        }
    }

    /// The card's memory, MB: the most `gpuMemorySize` may ask for.
    pub fn card_memory_mb(self) -> u64 {
        match self {
            GpuType::Tesla => 16 * 1024,
            GpuType::Ampere => 24 * 1024,
            GpuType::Ada => 48 * 1024,
        }
    }
}

/// A GPU function's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The card family (prices).
    pub kind: GpuType,
    /// `gpuMemorySize`, MB (billed).
    pub memory_mb: u64,
    /// The host GPUs (indices or UUIDs); empty: all of them.
    pub devices: Vec<String>,
}

/// How many instances of a function run: changeable without replacing any instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Minimum instances.
    pub min_instances: usize,
    /// Maximum instances of this function.
    pub max_instances: Option<usize>,
    /// Idle reclaim.
    pub idle_timeout: Duration,
}

/// What happens to its Async invocations: changeable without replacing any instance.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncSettings {
    /// Retries after a function error.
    pub retries: u32,
    /// How long an invocation may wait before it is dropped.
    pub max_age: Duration,
    /// Where a succeeded invocation's record goes.
    pub on_success: Option<Destination>,
    /// Where a failed or expired invocation's record goes.
    pub on_failure: Option<Destination>,
}

impl Function {
    /// Its Async settings.
    pub fn async_settings(&self) -> AsyncSettings {
        AsyncSettings {
            retries: self.async_retries,
            max_age: self.async_max_age,
            on_success: self.async_on_success.clone(),
            on_failure: self.async_on_failure.clone(),
        }
    }

    /// Its scaling settings.
    pub fn scaling(&self) -> Scaling {
        Scaling { min_instances: self.min_instances, max_instances: self.max_instances, idle_timeout: self.idle_timeout }
    }

    /// Whether `other` differs from it in scaling and Async settings at most (its instances
    /// can stay).
    pub fn same_instances_as(&self, other: &Function) -> bool {
        let mut a = self.clone();
        let s = other.scaling();
        (a.min_instances, a.max_instances, a.idle_timeout) = (s.min_instances, s.max_instances, s.idle_timeout);
        (a.async_retries, a.async_max_age) = (other.async_retries, other.async_max_age);
        (a.async_on_success, a.async_on_failure) = (other.async_on_success.clone(), other.async_on_failure.clone());
        a == *other
    }
}

/// CRC-64/XZ (the ECMA-182 variant Alibaba Cloud uses) over the code directory's regular
/// files in path order, each as its relative path, a NUL and its bytes; symlinks are not
/// followed. FC sums the uploaded package instead, so the figures differ from FC's, but any
/// change to the code changes it.
pub fn code_checksum(dir: &Path) -> std::io::Result<String> {
    fn walk(base: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(base, &entry.path(), files)?;
            } else if kind.is_file() {
                files.push(entry.path().strip_prefix(base).map(Path::to_path_buf).unwrap_or_default());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let mut digest = crc.digest();
    for rel in files {
        digest.update(rel.as_os_str().as_encoded_bytes());
        digest.update(&[0]);
        digest.update(&std::fs::read(dir.join(&rel))?);
    }
    Ok(digest.finalize().to_string())
}

/// Everything read from one file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Functions by name, in file order.
    pub functions: Vec<Function>,
    /// Supervisor-wide settings.
    pub global: GlobalExt,
    /// The file's directory: relative `code` paths resolve against it.
    pub base: PathBuf,
    /// Each function's `props` as resolved (variables, FC 2.0 → 3.0, text as written), by
    /// name: what `fcsup functions push` writes to etcd.
    pub props: BTreeMap<String, Value>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        Self::parse(&text, path, &base)
    }

    /// Parses `text` as if read from `path`, resolving relative paths against `base` and
    /// `${env(...)}` against this process's environment.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, path, base, &|k| std::env::var(k).ok())
    }

    /// [`Config::parse`] with the environment `env`.
    pub fn parse_with_env(text: &str, path: &Path, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.to_path_buf(), key, message };
        // YAML 1.2's booleans (as js-yaml, which `s` uses, reads them): `on`, `yes`, `y` stay text.
        let options = serde_saphyr::options! { strict_booleans: true };
        let doc: Value = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let mut doc = match doc {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            _ => return Err(ConfigError::Parse { path: path.to_path_buf(), message: "expected a map (resources:, services: or functions:)".into() }),
        };
        // Serverless Devs 3.x calls them `resources`, 1.x/2.x `services`.
        let (section, resources) = match (doc.remove("resources"), doc.remove("services")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "services".into(),
                    "resources: and services: in one file: use one (services: is Serverless Devs 1.x's name)".into(),
                ))
            }
            (Some(r), None) => ("resources", r),
            (None, Some(r)) => ("services", r),
            (None, None) => ("resources", Value::Object(serde_json::Map::new())),
        };
        let mut resources = match resources {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            _ => return Err(invalid(section.into(), "expected a map of resource name to {component, props}".into())),
        };
        let templates = doc.remove("template").unwrap_or(Value::Null);
        for (name, r) in resources.iter_mut() {
            extend(r, &templates).map_err(|m| invalid(format!("{section}.{name}.extend"), m))?;
        }
        let vars_value = doc.remove("vars").unwrap_or(Value::Null);
        let access = doc.get("access").and_then(Value::as_str).map(str::to_string);
        let scope = vars::Scope { vars: &vars_value, resources: &resources, section, this: None, access: access.as_deref(), base, env };
        let var_error = |e: vars::VarError| invalid(e.key, e.message);
        let global: GlobalExt = match doc.remove("fcsup") {
            Some(mut v) => {
                vars::resolve(&mut v, "fcsup", &scope).map_err(var_error)?;
                typed(v, "fcsup", None).map_err(|(k, m)| invalid(k, m))?
            }
            None => GlobalExt::default(),
        };
        let mut entries: Vec<(String, Value, bool)> = Vec::new();
        let mut skipped = Vec::new();
        for (name, raw) in &resources {
            let key = format!("{section}.{name}");
            let this = vars::Scope { this: Some(name), ..scope };
            let mut r = raw.clone();
            // The component first: a resource fcsup skips may use variables fcsup cannot resolve.
            if let Some(c) = r.get_mut("component") {
                vars::resolve(c, &format!("{key}.component"), &this).map_err(var_error)?;
            }
            let kind = fc2::component(&r);
            if let fc2::Component::Other(c) = &kind {
                tracing::info!("{}: {key} is a {c} resource, not a function: skipped", path.display());
                skipped.push(format!("{name} ({c})"));
                continue;
            }
            let Some(mut props) = r.get_mut("props").map(Value::take).filter(|p| !p.is_null()) else {
                return Err(invalid(format!("{key}.props"), "missing: a function's settings are under props".into()));
            };
            let props = match kind {
                fc2::Component::Fc2 => {
                    // FC 2.0's `function` holds what fcsup reads; `service` and `triggers` it ignores.
                    if let Some(f) = props.get_mut("function") {
                        let read: Vec<&str> = vars::struct_fields::<Props>().iter().chain(fc2::FC2_NAMES.iter()).copied().collect();
                        vars::resolve_props(f, &format!("{key}.props.function"), &this, &read).map_err(var_error)?;
                    }
                    if let Some(r) = props.get_mut("region") {
                        vars::resolve(r, &format!("{key}.props.region"), &this).map_err(var_error)?;
                    }
                    fc2::to_fc3(&props).map_err(|(k, m)| invalid(format!("{key}.props.{k}"), m))?
                }
                _ => {
                    vars::resolve_props(&mut props, &format!("{key}.props"), &this, vars::struct_fields::<Props>()).map_err(var_error)?;
                    props
                }
            };
            entries.push((format!("{key}.props"), props, kind == fc2::Component::Fc2));
        }
        if let Some(mut list) = doc.remove("functions") {
            vars::resolve(&mut list, "functions", &scope).map_err(var_error)?;
            match list {
                Value::Array(items) => entries.extend(items.into_iter().enumerate().map(|(i, p)| (format!("functions[{i}]"), p, false))),
                Value::Null => {}
                _ => return Err(invalid("functions".into(), "expected a list of props".into())),
            }
        }
        if entries.is_empty() {
            let also = if skipped.is_empty() { String::new() } else { format!(" (skipped, other components: {})", skipped.join(", ")) };
            return Err(invalid(
                "resources".into(),
                format!("no function found: expected resources.<name>.props (Serverless Devs s.yaml, component fc3), services.<name>.props.function (FC 2.0, component fc) or a functions: list{also}"),
            ));
        }
        let written = env_as_written(text);
        let cache = global.code_cache.as_ref().map_or_else(|| PathBuf::from(package::DEFAULT_DIR), |c| base.join(c));
        let mut functions = Vec::new();
        let mut resolved = BTreeMap::new();
        for (key, mut value, is_fc2) in entries {
            as_written(&mut value, written.get(&key));
            let raw = value.clone();
            let fc2_key = |k: &str| match (k, is_fc2) {
                ("", _) => key.clone(),
                (k, true) => format!("{key}.{}", fc2::key_in_fc2(k)),
                (k, false) => format!("{key}.{k}"),
            };
            let default_name = key.split('.').nth(1).filter(|_| !key.starts_with("functions[")).unwrap_or("");
            let mut props: Props = typed(value, "", written.get(&key)).map_err(|(k, m)| invalid(fc2_key(&k), m))?;
            unpack_code(&mut props, base, &cache).map_err(|m| invalid(fc2_key("code"), m))?;
            let f = validate(&props, default_name, base).map_err(|(k, message)| invalid(fc2_key(&k), message))?;
            if functions.iter().any(|g: &Function| g.name == f.name) {
                return Err(invalid(fc2_key("functionName"), format!("function {:?} is defined twice", f.name)));
            }
            resolved.insert(f.name.clone(), raw);
            functions.push(f);
        }
        validate::destinations_exist(&functions).map_err(|(key, message)| ConfigError::Invalid { path: path.to_path_buf(), key, message })?;
        Ok(Config { functions, global, base: base.to_path_buf(), props: resolved })
    }

    /// Parses one function's `props` (YAML or JSON) for `PUT /admin/functions/{name}`; relative
    /// paths resolve against `base` (the served file's directory).
    pub fn parse_function(text: &str, name: &str, base: &Path) -> Result<Function, ConfigError> {
        let at = PathBuf::from(format!("PUT /admin/functions/{name}"));
        let mut props: Props = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse { path: at.clone(), message: e.to_string() })?;
        props.function_name = Some(name.to_string());
        unpack_code(&mut props, base, Path::new(package::DEFAULT_DIR)).map_err(|message| ConfigError::Invalid {
            path: at.clone(),
            key: "code".into(),
            message,
        })?;
        validate(&props, name, base).map_err(|(key, message)| ConfigError::Invalid { path: at, key, message })
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Serverless Devs 3.x's `extend: {name, ignore}`: the resource's props laid over top-level
/// `template.<name>` (less the `ignore`d keys), merged deeply as `s` merges them (extend2: maps
/// key by key, lists index by index).
fn extend(resource: &mut Value, templates: &Value) -> Result<(), String> {
    fn merge(base: &mut Value, over: Value) {
        match (base, over) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    match b.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (Value::Array(b), Value::Array(o)) => {
                for (i, v) in o.into_iter().enumerate() {
                    match b.get_mut(i) {
                        Some(slot) => merge(slot, v),
                        None => b.push(v),
                    }
                }
            }
            (b, o) => *b = o,
        }
    }
    let Some(ext) = resource.get("extend").filter(|e| !e.is_null()) else { return Ok(()) };
    let Some(name) = ext.get("name").and_then(Value::as_str) else { return Err("extend needs a name: the key of a top-level template".into()) };
    let Some(mut base) = templates.get(name).cloned() else { return Err(format!("there is no template.{name}")) };
    for k in ext.get("ignore").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if let Some(m) = base.as_object_mut() {
            m.remove(k);
        }
    }
    if let Some(props) = resource.get_mut("props").map(Value::take).filter(|p| !p.is_null()) {
        merge(&mut base, props);
    }
    resource["props"] = base;
    Ok(())
}

/// Text a function's props hold as written, where YAML would read a number.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Written {
    #[serde(rename = "environmentVariables")]
    env: BTreeMap<String, String>,
    #[serde(rename = "customRuntimeConfig")]
    crc: WrittenCommand,
}

/// `customRuntimeConfig`'s lists as written.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WrittenCommand {
    command: Vec<String>,
    args: Vec<String>,
}

/// Each function's [`Written`] text, by entry key (`resources.NAME.props`, `functions[i]`);
/// empty where the file does not read that way.
fn env_as_written(text: &str) -> BTreeMap<String, Written> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Env {
        #[serde(rename = "environmentVariables")]
        env: BTreeMap<String, String>,
        #[serde(rename = "customRuntimeConfig")]
        crc: WrittenCommand,
        function: Option<Box<Env>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Resource {
        props: Env,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct File {
        resources: BTreeMap<String, Resource>,
        services: BTreeMap<String, Resource>,
        functions: Vec<Env>,
    }
    let Ok(file) = serde_saphyr::from_str::<File>(text) else { return BTreeMap::new() };
    // FC 2.0 keeps them under props.function.
    let own = |e: Env| {
        let e = match e.function {
            Some(f) => *f,
            None => e,
        };
        Written { env: e.env, crc: e.crc }
    };
    let resources = file.resources.into_iter().map(|(k, r)| (format!("resources.{k}.props"), own(r.props)));
    let services = file.services.into_iter().map(|(k, r)| (format!("services.{k}.props"), own(r.props)));
    let functions = file.functions.into_iter().enumerate().map(|(i, e)| (format!("functions[{i}]"), own(e)));
    resources.chain(services).chain(functions).collect()
}

/// `value` as a `T`; on error, the dotted key below `at` and the message.
fn typed<T: serde::de::DeserializeOwned>(mut value: Value, at: &str, written: Option<&Written>) -> Result<T, (String, String)> {
    as_written(&mut value, written);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (at.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => at.to_string(),
            (false, false) => format!("{at}.{inner}"),
        };
        (key, e.into_inner().to_string())
    })
}

/// What is text to the process (environment, command lines) made text, as written in the file.
fn as_written(value: &mut Value, written: Option<&Written>) {
    // YAML writes `PORT: 9000`, `VERSION: 1.10` or `args: [--port, 9000]` for what is text to
    // the process: the text as written, unless a variable made the value.
    let text = |v: &mut Value, raw: Option<&String>| {
        if matches!(v, Value::Number(_) | Value::Bool(_)) {
            let raw = raw.filter(|t| !t.contains("${"));
            *v = Value::String(raw.cloned().unwrap_or_else(|| v.to_string()));
        }
    };
    if let Some(env) = value.get_mut("environmentVariables").and_then(Value::as_object_mut) {
        for (k, v) in env.iter_mut() {
            text(v, written.and_then(|w| w.env.get(k)));
        }
    }
    for k in ["functionName", "runtime", "region", "code", "handler"] {
        if let Some(v) = value.get_mut(k) {
            text(v, None);
        }
    }
    let lists = [
        ("customRuntimeConfig", "command"),
        ("customRuntimeConfig", "args"),
        ("customContainerConfig", "entrypoint"),
        ("customContainerConfig", "command"),
    ];
    for (section, key) in lists {
        let raw = written.filter(|_| section == "customRuntimeConfig").map(|w| if key == "command" { &w.crc.command } else { &w.crc.args });
        if let Some(items) = value.get_mut(section).and_then(|s| s.get_mut(key)).and_then(Value::as_array_mut) {
            let same_shape = raw.filter(|r| r.len() == items.len());
            for (i, v) in items.iter_mut().enumerate() {
                text(v, same_shape.map(|r| &r[i]));
            }
        }
    }
}

/// A `code` package (`.zip`, `.jar`) replaced by the directory it unpacks to under `cache`.
fn unpack_code(props: &mut Props, base: &Path, cache: &Path) -> Result<(), String> {
    let Some(code) = props.code.as_deref().filter(|c| package::is_package(Path::new(c))) else { return Ok(()) };
    if props.runtime.as_deref() == Some("custom-container") {
        return Ok(());
    }
    let dir = package::unpack(&base.join(code), cache)?;
    props.code = Some(dir.display().to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "STAGE" => Some("prod".into()),
            _ => None,
        }
    }

    fn dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        dir
    }

    fn parse(yaml: &str, dir: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(yaml, Path::new("s.yaml"), dir, &env)
    }

    /// As the start-fc3 templates write them: vars, a domain resource pointing at the function.
    const TEMPLATE: &str = r#"
edition: 3.0.0
name: start-fc3-python
access: "default"
vars:
  region: "cn-hangzhou"
  functionName: "start-python-${env('STAGE')}"
resources:
  hello_world:
    component: fc3
    actions:
      pre-deploy:
        - run: pip3 install -r requirements.txt -t . ${this.props.nope}
          path: ./code
    props:
      region: ${vars.region}
      functionName: ${vars.functionName}
      description: 'hello world by serverless devs'
      runtime: custom.debian10
      code: ./code
      memorySize: 128
      timeout: 30
      role: acs:ram::${config('AccountID')}:role/aliyunfcdefaultrole
      environmentVariables:
        REGION: ${vars.region}
        NAME: ${this.name}
        PORT: 9000
      customRuntimeConfig:
        command:
          - python3
          - app.py
        port: 9000
      triggers:
        - triggerName: httpTrigger
          triggerType: http
          triggerConfig:
            authType: anonymous
            methods: [GET, POST]
  fc3_domain_0:
    component: fc3-domain
    props:
      region: ${vars.region}
      domainName: auto
      routeConfig:
        routes:
          - functionName: ${resources.hello_world.props.functionName}
            path: /*
"#;

    #[test]
    fn a_template_with_variables_and_a_domain() {
        let d = dir();
        let cfg = parse(TEMPLATE, d.path()).unwrap();
        assert_eq!(cfg.functions.len(), 1, "the fc3-domain resource is not a function");
        let f = &cfg.functions[0];
        assert_eq!(f.name, "start-python-prod");
        assert_eq!(f.region, "cn-hangzhou");
        assert_eq!(f.env["REGION"], "cn-hangzhou");
        assert_eq!(f.env["NAME"], "hello_world");
        assert_eq!(f.env["PORT"], "9000");
        assert_eq!(f.command, ["python3", "app.py"]);
        let e =
            parse(&TEMPLATE.replace("${vars.region}\n      functionName", "${vars.regoin}\n      functionName"), d.path()).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml: resources.hello_world.props.region: ${vars.regoin}: unknown variable"), "{e}");
        let e = parse(&TEMPLATE.replace("start-python-${env('STAGE')}", "${env('NO_SUCH')}"), d.path()).unwrap_err().to_string();
        assert!(e.contains("resources.hello_world.props.functionName") && e.contains("NO_SUCH is not set"), "{e}");
    }

    #[test]
    fn yaml_1_1_booleans_stay_text() {
        let d = dir();
        let cfg = parse("vars: {v: 1.50}\nresources:\n  f:\n    props:\n      environmentVariables: {A: yes, B: on, C: true, D: 0755, E: 1.10, F: '${vars.v}'}\n      customRuntimeConfig: {command: [y, n], args: [--port, 9000, 1.10]}\n", d.path()).unwrap();
        let f = &cfg.functions[0];
        assert_eq!(f.env.values().collect::<Vec<_>>(), ["yes", "on", "true", "0755", "1.10", "1.5"]);
        assert_eq!(f.command, ["y", "n", "--port", "9000", "1.10"]);
    }

    #[test]
    fn resources_extend_templates() {
        let d = dir();
        let yaml = "template:\n  base:\n    memorySize: 256\n    timeout: 9\n    environmentVariables: {A: a, B: b}\n    customRuntimeConfig: {command: [x, y]}\nresources:\n  f:\n    extend: {name: base, ignore: [timeout]}\n    props:\n      environmentVariables: {B: bb, C: '${this.props.memorySize}'}\n      customRuntimeConfig: {command: [z]}\n";
        let cfg = parse(yaml, d.path()).unwrap();
        let f = &cfg.functions[0];
        assert_eq!((f.memory_mb, f.timeout), (256, Duration::from_secs(3)), "memorySize from the template, timeout ignored");
        assert_eq!(f.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), ["A=a", "B=bb", "C=256"]);
        assert_eq!(f.command, ["z", "y"], "lists merge index by index, as s (extend2) merges them");
        let e = parse(&yaml.replace("name: base", "name: nope"), d.path()).unwrap_err().to_string();
        assert!(e.contains("resources.f.extend: there is no template.nope"), "{e}");
    }

    #[test]
    fn only_foreign_components_is_no_function() {
        let d = dir();
        let e = parse("resources:\n  dom:\n    component: fc3-domain\n    props:\n      domainName: auto\n", d.path()).unwrap_err().to_string();
        assert!(e.contains("no function found") && e.contains("dom (fc3-domain)"), "{e}");
    }

    /// As the awesome-fc examples write them.
    const FC2: &str = r#"
edition: 1.0.0
name: fc2-app
access: default
vars:
  region: cn-shenzhen
services:
  web-framework:
    component: devsapp/fc
    props:
      region: ${vars.region}
      service:
        name: web-svc
        description: 'Serverless Devs Web Framework Service'
        role: acs:ram::${config('AccountID')}:role/x
      function:
        name: flask-app
        description: 'Serverless Devs Web Framework Function'
        codeUri: './code'
        runtime: custom
        caPort: 5000
        memorySize: 256
        timeout: 60
        instanceConcurrency: 4
        initializer: index.init
        initializationTimeout: 10
        instanceLifecycleConfig:
          preFreeze:
            handler: pf
            timeout: 5
        environmentVariables:
          SERVICE: ${this.props.service.name}
      triggers:
        - name: httpTrigger
          type: http
          config:
            authType: anonymous
            methods: [GET]
  domain:
    component: devsapp/fc-domain
    props:
      customDomains:
        - domainName: auto
"#;

    #[test]
    fn an_fc2_file() {
        let d = dir();
        let cfg = parse(FC2, d.path()).unwrap();
        assert_eq!(cfg.functions.len(), 1);
        let f = &cfg.functions[0];
        assert_eq!((f.name.as_str(), f.region.as_str(), f.port, f.memory_mb, f.concurrency), ("flask-app", "cn-shenzhen", 5000, 256, 4));
        assert_eq!(f.initializer, Some(Hook { handler: "index.init".into(), timeout: Duration::from_secs(10) }));
        assert_eq!(f.pre_freeze.as_ref().unwrap().handler, "pf");
        assert_eq!(f.env["SERVICE"], "web-svc");
        let e = parse(&FC2.replace("memorySize: 256", "memorySize: 100"), d.path()).unwrap_err().to_string();
        assert!(e.contains("services.web-framework.props.function.memorySize"), "{e}");
        let e = parse(&FC2.replace("caPort: 5000", "caPort: 0"), d.path()).unwrap_err().to_string();
        assert!(e.contains("services.web-framework.props.function.caPort"), "FC 2.0's name: {e}");
        let e = parse(&FC2.replace("initializationTimeout: 10", "initializationTimeout: 1000"), d.path()).unwrap_err().to_string();
        assert!(e.contains("props.function.initializationTimeout"), "{e}");
    }

    #[test]
    fn zip_and_jar_code() {
        let d = dir();
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("bootstrap", zip::write::SimpleFileOptions::default().unix_permissions(0o755)).unwrap();
        w.write_all(b"#!/bin/sh\n").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        std::fs::write(d.path().join("code.zip"), &bytes).unwrap();
        std::fs::write(d.path().join("app.jar"), &bytes).unwrap();
        let yaml = "fcsup:\n  codeCache: cache\nresources:\n  a:\n    props:\n      code: ./code.zip\n  b:\n    props:\n      code: app.jar\n";
        let cfg = parse(yaml, d.path()).unwrap();
        let (a, b) = (&cfg.functions[0], &cfg.functions[1]);
        assert!(a.code_dir.starts_with(d.path().join("cache")), "{}", a.code_dir.display());
        assert!(a.code_dir.join("bootstrap").is_file());
        assert_eq!(a.code_dir, b.code_dir, "same bytes, one copy");
        assert_eq!(a.code_checksum, b.code_checksum);
        std::fs::write(d.path().join("bad.zip"), b"PK not really").unwrap();
        let e = parse(&yaml.replace("./code.zip", "bad.zip"), d.path()).unwrap_err().to_string();
        assert!(e.contains("resources.a.props.code") && e.contains("not a zip"), "{e}");
    }

    #[test]
    fn anchors_merge_keys_and_type_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        let yaml = "common: &common\n  memorySize: 256\n  timeout: 9\nresources:\n  a:\n    props:\n      <<: *common\n      functionName: a\n  b:\n    props: *common\n";
        let cfg = Config::parse(yaml, Path::new("s.yaml"), dir.path()).unwrap();
        assert_eq!((cfg.functions[0].memory_mb, cfg.functions[0].timeout), (256, Duration::from_secs(9)));
        assert_eq!((cfg.functions[1].name.as_str(), cfg.functions[1].memory_mb), ("b", 256));
        let e = Config::parse("resources:\n  a:\n    props:\n      memorySize: lots\n", Path::new("s.yaml"), dir.path()).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml: resources.a.props.memorySize: invalid type: string \"lots\""), "{e}");
        let e = Config::parse("resources:\n  a:\n    props:\n      memorySize: [\n", Path::new("s.yaml"), dir.path()).unwrap_err().to_string();
        assert!(e.contains("line"), "a syntax error keeps its position: {e}");
    }
}
