//! What a function's device grants (`fcsup.devices`, `gpuConfig`) come to for one instance:
//! CDI edits resolved into sandbox steps (nodes, read-only binds, environment), device-cgroup
//! rules, and the OCI hooks to run around the start. A GPU function uses the CDI spec of
//! `nvidia.com/gpu` when one is installed, else NVIDIA's legacy prestart hook.

use std::path::PathBuf;

use super::cdi::{ContainerEdits, NodeKind, Registry};
use super::nvidia;
use crate::cgroup::{Access, DeviceRule};
use crate::config::Function;
use crate::sandbox::{DeviceNode, GrantMount, Grants};

/// CDI's kind for NVIDIA GPUs.
pub const NVIDIA_GPU_KIND: &str = "nvidia.com/gpu";

/// The NVIDIA character devices' major (`/dev/nvidia*`, `nvidiactl`).
const NVIDIA_MAJOR: u32 = 195;

/// One instance's grant.
#[derive(Debug, Default)]
pub struct Granted {
    /// `NAME=VALUE` entries added to (or replacing) the instance's environment.
    pub env: Vec<String>,
    /// Nodes and binds for the sandbox.
    pub sandbox: Grants,
    /// Device-cgroup allow rules beyond the default list.
    pub rules: Vec<DeviceRule>,
    /// OCI hooks, by phase (CDI's, or the legacy NVIDIA prestart hook).
    pub hooks: oci_spec::runtime::Hooks,
    /// `config.json`'s environment for the legacy NVIDIA hook (empty otherwise).
    pub bundle_env: Vec<String>,
}

impl Granted {
    /// Whether anything runs around the start (the sandbox must stop for it).
    pub fn has_hooks(&self) -> bool {
        super::hooks::HookPhase::ALL.iter().any(|p| !p.hooks(&self.hooks).is_empty())
    }
}

/// Why a grant cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// CDI could not resolve or apply the names.
    #[error("devices {names:?}: {message}")]
    Cdi {
        /// The names asked for.
        names: Vec<String>,
        /// Why.
        message: String,
    },
    /// The legacy NVIDIA path failed.
    #[error(transparent)]
    Nvidia(#[from] nvidia::NvidiaError),
}

/// The CDI names `function` asks for: `fcsup.devices`, then its GPUs as `nvidia.com/gpu`
/// names when `registry` knows that kind (else the legacy hook serves them).
pub fn cdi_names(function: &Function, registry: &Registry) -> Vec<String> {
    let mut names = function.devices.clone();
    if let Some(gpu) = &function.gpu {
        if registry.device_names().iter().any(|n| n.starts_with(&format!("{NVIDIA_GPU_KIND}="))) {
            if gpu.devices.is_empty() {
                names.push(format!("{NVIDIA_GPU_KIND}=all"));
            } else {
                names.extend(gpu.devices.iter().map(|d| format!("{NVIDIA_GPU_KIND}={d}")));
            }
        }
    }
    names
}

/// Resolves `function`'s grant against `registry`; `path` is where the legacy hook is looked
/// for (the supervisor's `PATH`).
pub fn resolve(function: &Function, registry: &Registry, path: Option<&std::ffi::OsStr>) -> Result<Granted, GrantError> {
    let names = cdi_names(function, registry);
    let mut granted = Granted::default();
    if !names.is_empty() {
        let edits = registry.resolve(&names).map_err(|e| GrantError::Cdi { names: names.clone(), message: e.to_string() })?;
        apply(&edits, &mut granted).map_err(|message| GrantError::Cdi { names, message })?;
    }
    let by_cdi = function.gpu.is_some() && cdi_names(function, registry).iter().any(|n| n.starts_with(NVIDIA_GPU_KIND));
    if let (Some(gpu), false) = (&function.gpu, by_cdi) {
        let ids = if gpu.devices.is_empty() { vec!["all".to_string()] } else { gpu.devices.clone() };
        if let Some(legacy) = nvidia::legacy_hook(&function.env, &ids, path, false)? {
            let mut prestart = granted.hooks.prestart().clone().unwrap_or_default();
            prestart.push(legacy.hook);
            granted.hooks.set_prestart(Some(prestart));
            granted.bundle_env = legacy.env;
            // nvidia-container-cli binds the nodes itself; the device cgroup is ours.
            granted.rules.push(DeviceRule {
                kind: crate::cgroup::DeviceKind::Char,
                major: Some(NVIDIA_MAJOR),
                minor: None,
                access: Access::RW,
                allow: true,
            });
            if let Some(uvm) = char_major("nvidia-uvm") {
                granted.rules.push(DeviceRule {
                    kind: crate::cgroup::DeviceKind::Char,
                    major: Some(uvm),
                    minor: None,
                    access: Access::RW,
                    allow: true,
                });
            }
        }
    }
    Ok(granted)
}

/// CDI edits as sandbox steps and cgroup rules.
fn apply(edits: &ContainerEdits, granted: &mut Granted) -> Result<(), String> {
    granted.env.clone_from(&edits.env);
    for n in &edits.device_nodes {
        let block = match n.kind {
            NodeKind::Char => false,
            NodeKind::Block => true,
            NodeKind::Fifo => return Err(format!("{}: FIFOs are not supported as devices", n.path.display())),
        };
        let number = |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{}: {what} number {v} is out of range", n.path.display()));
        let path =
            n.path.to_str().filter(|p| p.starts_with("/dev/")).ok_or_else(|| format!("{}: a device node must be under /dev", n.path.display()))?;
        granted.sandbox.nodes.push(DeviceNode {
            path: path.to_string(),
            block,
            major: number(n.major, "major")?,
            minor: number(n.minor, "minor")?,
            mode: n.file_mode.unwrap_or(0o666),
        });
    }
    for rule in edits.device_rules() {
        let access: Access = rule.access.parse().map_err(|e| format!("access {:?}: {e}", rule.access))?;
        let major = u32::try_from(rule.major).map_err(|_| format!("major {} is out of range", rule.major))?;
        let minor = u32::try_from(rule.minor).map_err(|_| format!("minor {} is out of range", rule.minor))?;
        granted.rules.push(match rule.kind {
            NodeKind::Block => DeviceRule::allow_block(major, minor, access),
            _ => DeviceRule::allow_char(major, minor, access),
        });
    }
    for m in &edits.mounts {
        if !m.is_bind() {
            return Err(format!("mount {} of type {:?}: only bind mounts are supported", m.container_path.display(), m.fs_type));
        }
        let target = m
            .container_path
            .to_str()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| format!("{}: not an absolute path", m.container_path.display()))?;
        granted.sandbox.mounts.push(GrantMount { host: PathBuf::from(&m.host_path), target: target.to_string() });
    }
    granted.hooks = edits.hooks.clone();
    Ok(())
}

/// A character device's major from `/proc/devices` (`nvidia-uvm`'s is dynamic).
fn char_major(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/devices").ok()?;
    let chars = text.split("Block devices:").next()?;
    chars.lines().find_map(|l| {
        let (n, dev) = l.trim().split_once(' ')?;
        (dev.trim() == name).then(|| n.parse().ok()).flatten()
    })
}
