//! The function configuration: a Serverless Devs `s.yaml` (functions under
//! `resources.<name>.props`) or a plain list of such `props`, plus fcsup's own `fcsup:` keys.
//!
//! Parsing is strict about types (the YAML parser reports line and column) and [`validate`]
//! checks ranges with FC's limits, so a bad file fails at start naming the file and the key.

mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

/// A whole `s.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SFile {
    #[serde(default)]
    resources: BTreeMap<String, Resource>,
    #[serde(default)]
    fcsup: Option<GlobalExt>,
    #[serde(default)]
    functions: Vec<Props>,
}

#[derive(Debug, Deserialize)]
struct Resource {
    props: Props,
}

/// Supervisor-wide settings under the file's top-level `fcsup:` key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalExt {
    /// Instance cap across all functions (FC's per-region cap; default 100).
    pub max_instances: Option<usize>,
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

impl Function {
    /// Its scaling settings.
    pub fn scaling(&self) -> Scaling {
        Scaling { min_instances: self.min_instances, max_instances: self.max_instances, idle_timeout: self.idle_timeout }
    }

    /// Whether `other` differs from it in scaling settings at most (its instances can stay).
    pub fn same_instances_as(&self, other: &Function) -> bool {
        let mut a = self.clone();
        let s = other.scaling();
        (a.min_instances, a.max_instances, a.idle_timeout) = (s.min_instances, s.max_instances, s.idle_timeout);
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
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        Self::parse(&text, path, &base)
    }

    /// Parses `text` as if read from `path`, resolving relative paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let file: SFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let mut entries: Vec<(String, Props)> = file.resources.into_iter().map(|(k, r)| (format!("resources.{k}.props"), r.props)).collect();
        for (i, p) in file.functions.into_iter().enumerate() {
            entries.push((format!("functions[{i}]"), p));
        }
        if entries.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "resources".into(),
                message: "no function found: expected resources.<name>.props (Serverless Devs s.yaml) or a functions: list".into(),
            });
        }
        let mut functions = Vec::new();
        for (key, props) in entries {
            let default_name = key.strip_prefix("resources.").and_then(|k| k.strip_suffix(".props")).unwrap_or("");
            let f = validate(&props, default_name, base).map_err(|(k, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("{key}.{k}"),
                message,
            })?;
            if functions.iter().any(|g: &Function| g.name == f.name) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("{key}.functionName"),
                    message: format!("function {:?} is defined twice", f.name),
                });
            }
            functions.push(f);
        }
        validate::destinations_exist(&functions).map_err(|(key, message)| ConfigError::Invalid { path: path.to_path_buf(), key, message })?;
        Ok(Config { functions, global: file.fcsup.unwrap_or_default(), base: base.to_path_buf() })
    }

    /// Parses one function's `props` (YAML or JSON) for `PUT /admin/functions/{name}`; relative
    /// paths resolve against `base` (the served file's directory).
    pub fn parse_function(text: &str, name: &str, base: &Path) -> Result<Function, ConfigError> {
        let at = PathBuf::from(format!("PUT /admin/functions/{name}"));
        let mut props: Props = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse { path: at.clone(), message: e.to_string() })?;
        props.function_name = Some(name.to_string());
        validate(&props, name, base).map_err(|(key, message)| ConfigError::Invalid { path: at, key, message })
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}
