//! CDI (Container Device Interface, spec 1.1): device specs read from directories, validated,
//! device names such as `nvidia.com/gpu=0` resolved, and their `containerEdits` merged into one
//! [`ContainerEdits`] the sandbox applies.
//!
//! Follows the Go reference (`tags.cncf.io/container-device-interface`, `pkg/cdi`):
//! - Directories are scanned in order, non-recursively, `*.json` and `*.yaml` only, files in
//!   name order; a later directory has a higher priority and overrides an earlier one for the
//!   same device. Two specs in directories of the same priority defining one device are a
//!   conflict: the device is dropped and the conflict recorded.
//! - A spec that cannot be read, parsed or validated is recorded in [`Registry::errors`] with
//!   its path and skipped; the other specs still load.
//! - Unknown fields are errors; `cdiVersion` must be known and at least what the fields used
//!   need; names follow `pkg/parser`; edits are validated as `ContainerEdits.Validate` does.
//! - Edits are merged as `Cache.InjectDevices` + `ContainerEdits.Apply` do: each distinct spec's
//!   own edits once (before its first requested device), then each device's edits; `env`
//!   entries replace an earlier one with the same name, device nodes replace one with the same
//!   path, mounts replace one with the same container path and are then sorted (stably) by
//!   depth, hooks are appended per phase, additional GIDs skip 0 and duplicates.
//!
//! Where fcsup differs, on purpose: `vendor/class=all` expands to every device of that kind
//! when no spec defines a device named `all` (NVIDIA's generated specs do define one); a device
//! requested twice is merged once; hook paths must be absolute and timeouts positive (the spec
//! says MUST, the Go code does not check); `intelRdt` and `netDevices` load but a request for a
//! device using them is refused, since fcsup has neither resctrl classes nor host interfaces
//! to move.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime as oci;
use serde::Deserialize;

use super::hooks::HookPhase;

/// Where CDI specs are looked for unless configured otherwise, lowest priority first:
/// static specs, then generated ones (`nvidia-cdi-refresh.service` writes
/// `/var/run/cdi/nvidia.yaml`).
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Known spec versions, newest first, as `specs-go/version.go` lists them.
const VERSIONS: [&str; 10] = ["1.1.0", "1.0.0", "0.8.0", "0.7.0", "0.6.0", "0.5.0", "0.4.0", "0.3.0", "0.2.0", "0.1.0"];

/// Errors of loading specs and resolving devices; each names the file or device at fault.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A spec directory that exists but cannot be listed.
    #[error("failed to list CDI spec directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// What listing it returned.
        source: io::Error,
    },
    /// A spec file that cannot be read.
    #[error("failed to read CDI spec {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it returned.
        source: io::Error,
    },
    /// A spec file that is not valid JSON/YAML for the schema (unknown fields included).
    #[error("failed to parse CDI spec {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A spec that parses but breaks the CDI rules.
    #[error("invalid CDI spec {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which rule, and where.
        message: String,
    },
    /// Two specs of the same priority define the same device; neither is used.
    #[error("conflicting CDI device {name} (specs {first}, {second}): neither is used; remove one or move it to another directory")]
    Conflict {
        /// The qualified device name.
        name: String,
        /// The spec loaded first.
        first: PathBuf,
        /// The spec loaded second.
        second: PathBuf,
    },
    /// A requested name that is not `vendor/class=name`.
    #[error("{name:?} is not a CDI device name (vendor.com/class=name): {message}")]
    BadName {
        /// The name as requested.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// Requested devices that no loaded spec defines.
    #[error("unresolvable CDI devices {}: no valid spec in {} defines them{}", names.join(", "), dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "), if *spec_errors > 0 { format!(" ({spec_errors} spec file(s) were skipped as invalid: see `fcsup check`)") } else { String::new() })]
    Unresolved {
        /// The names not found.
        names: Vec<String>,
        /// The directories searched.
        dirs: Vec<PathBuf>,
        /// How many spec files failed to load (one of them may have defined the device).
        spec_errors: usize,
    },
    /// A device whose edits cannot be applied (a host device node missing or of the wrong
    /// type, an edit fcsup does not support).
    #[error("CDI device {device} (spec {path}): {message}")]
    Edit {
        /// The qualified device name.
        device: String,
        /// Its spec file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// A CDI spec file as written (`specs-go/config.go`); unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// `cdiVersion`, e.g. `0.6.0` (a leading `v` is accepted).
    pub cdi_version: String,
    /// `vendor/class`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    /// Free-form metadata (0.6.0).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The devices; at least one.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Edits applied once when any device of this spec is requested.
    #[serde(default)]
    pub container_edits: Edits,
}

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    /// The name after `=` in a request.
    pub name: String,
    /// Free-form metadata (0.6.0).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Edits applied when this device is requested; must not be empty.
    #[serde(default)]
    pub container_edits: Edits,
}

/// `containerEdits` as written in a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Edits {
    /// `NAME=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Device nodes to create in the instance's `/dev`.
    #[serde(default)]
    pub device_nodes: Vec<SpecDeviceNode>,
    /// Host network interfaces to move into the instance (1.1.0; refused when requested).
    #[serde(default)]
    pub net_devices: Vec<NetDevice>,
    /// OCI hooks.
    #[serde(default)]
    pub hooks: Vec<SpecHook>,
    /// Mounts.
    #[serde(default)]
    pub mounts: Vec<SpecMount>,
    /// Intel RDT class of service (0.7.0; refused when requested).
    #[serde(default)]
    pub intel_rdt: Option<IntelRdt>,
    /// Supplementary groups for the instance's process (0.7.0).
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// A `deviceNodes` entry as written; empty strings and zero numbers mean "not given", as in Go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecDeviceNode {
    /// Path in the instance.
    pub path: String,
    /// Path on the host (0.5.0); defaults to `path`.
    #[serde(default)]
    pub host_path: String,
    /// `c`, `b`, `u` or `p`; filled from the host node when empty.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Filled (with `minor`) from the host node when 0.
    #[serde(default)]
    pub major: i64,
    /// Device minor.
    #[serde(default)]
    pub minor: i64,
    /// Permission bits of the node; from the host node when absent.
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Device-cgroup access: any of `rwm`, empty for `rwm`, `none` for no rule.
    #[serde(default)]
    pub permissions: String,
    /// Owner in the instance.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group in the instance.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A `mounts` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecMount {
    /// Source on the host.
    pub host_path: String,
    /// Destination in the instance.
    pub container_path: String,
    /// Mount options (`rbind`/`bind` make it a bind mount).
    #[serde(default)]
    pub options: Vec<String>,
    /// Filesystem type (0.4.0).
    #[serde(default, rename = "type")]
    pub fs_type: String,
}

/// A `hooks` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecHook {
    /// The OCI hook phase: `prestart`, `createRuntime`, `createContainer`, `startContainer`,
    /// `poststart` or `poststop`.
    pub hook_name: String,
    /// Absolute path of the executable.
    pub path: String,
    /// argv, including argv\[0\].
    #[serde(default)]
    pub args: Vec<String>,
    /// The hook's whole environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds before the hook is killed.
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// `intelRdt` as written (accepted in specs, refused when a device using it is requested).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntelRdt {
    /// Class of service.
    #[serde(default, rename = "closID")]
    pub clos_id: String,
    /// L3 cache allocation schema.
    #[serde(default)]
    pub l3_cache_schema: String,
    /// Memory bandwidth schema.
    #[serde(default)]
    pub mem_bw_schema: String,
    /// Schemata lines (1.1.0).
    #[serde(default)]
    pub schemata: Option<Vec<String>>,
    /// Monitoring (1.1.0).
    #[serde(default)]
    pub enable_monitoring: bool,
}

/// `netDevices` entry as written (accepted in specs, refused when requested).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetDevice {
    /// Interface on the host.
    pub host_interface_name: String,
    /// Its name in the instance.
    pub name: String,
}

/// What kind of device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Character device (`c`, or `u` for unbuffered, which Linux makes a char device too).
    Char,
    /// Block device (`b`).
    Block,
    /// FIFO (`p`): no major/minor, no cgroup rule.
    Fifo,
}

impl NodeKind {
    fn parse(s: &str) -> Option<NodeKind> {
        match s {
            "c" | "u" => Some(NodeKind::Char),
            "b" => Some(NodeKind::Block),
            "p" => Some(NodeKind::Fifo),
            _ => None,
        }
    }

    /// The letter OCI and the device cgroup use (`c`, `b`, `p`).
    pub fn letter(self) -> char {
        match self {
            NodeKind::Char => 'c',
            NodeKind::Block => 'b',
            NodeKind::Fifo => 'p',
        }
    }
}

/// A device node to create in the instance, with everything filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path in the instance.
    pub path: PathBuf,
    /// The host node it mirrors.
    pub host_path: PathBuf,
    /// Char, block or FIFO.
    pub kind: NodeKind,
    /// Major number (0 for a FIFO).
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits (from the spec, else the host node).
    pub file_mode: Option<u32>,
    /// Device-cgroup access to grant, normalised: some of `rwm`, empty for none.
    pub access: String,
    /// Owner in the instance, if the spec gave one.
    pub uid: Option<u32>,
    /// Group in the instance, if the spec gave one.
    pub gid: Option<u32>,
}

/// One device-cgroup allow rule, as plain data for the device-cgroup program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceRule {
    /// Char or block.
    pub kind: NodeKind,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Some of `rwm`, non-empty.
    pub access: String,
}

/// A mount to make in the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Source on the host.
    pub host_path: PathBuf,
    /// Destination in the instance.
    pub container_path: PathBuf,
    /// Filesystem type (often empty or `none` for bind mounts).
    pub fs_type: String,
    /// Mount options as the spec wrote them.
    pub options: Vec<String>,
}

impl Mount {
    /// Whether this is a bind mount (`bind` or `rbind` among the options, as the Go code
    /// and runc decide).
    pub fn is_bind(&self) -> bool {
        self.options.iter().any(|o| o == "bind" || o == "rbind")
    }

    /// The OCI form, for a bundle's `config.json`.
    pub fn to_oci(&self) -> oci::Mount {
        let mut m = oci::Mount::default();
        m.set_destination(self.container_path.clone());
        m.set_source(Some(self.host_path.clone()));
        m.set_typ((!self.fs_type.is_empty()).then(|| self.fs_type.clone()));
        m.set_options((!self.options.is_empty()).then(|| self.options.clone()));
        m
    }
}

/// The merged edits of the requested devices, ready to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEdits {
    /// `NAME=VALUE` entries, in order, one per name.
    pub env: Vec<String>,
    /// Device nodes, one per instance path.
    pub device_nodes: Vec<DeviceNode>,
    /// Mounts, one per destination, sorted so parents come before children.
    pub mounts: Vec<Mount>,
    /// Hooks per phase, in spec order.
    pub hooks: oci::Hooks,
    /// Supplementary groups (no 0, no duplicates).
    pub additional_gids: Vec<u32>,
}

impl ContainerEdits {
    /// The device-cgroup allow rules the device nodes need: one per char/block node whose
    /// access is not `none`.
    pub fn device_rules(&self) -> Vec<DeviceRule> {
        device_rules(&self.device_nodes)
    }

    /// Merges `env` into an existing environment as the reference does: an entry replaces
    /// the one with the same name in place, others are appended.
    pub fn apply_env(&self, env: &mut Vec<String>) {
        for e in &self.env {
            add_env(env, e);
        }
    }

    /// Applies the edits to an OCI spec exactly as the Go `ContainerEdits.Apply` does
    /// (`process.env`, `linux.devices` and their cgroup allow rules, `mounts` then sorted,
    /// `hooks`, `process.user.additionalGids`); node owners default to `process.user` when
    /// that is not root.
    pub fn apply_to_spec(&self, spec: &mut oci::Spec) {
        let mut process = spec.process().clone().unwrap_or_default();
        let mut env = process.env().clone().unwrap_or_default();
        self.apply_env(&mut env);
        process.set_env(Some(env));
        let (uid, gid) = (process.user().uid(), process.user().gid());
        let mut gids = process.user().additional_gids().clone().unwrap_or_default();
        for g in &self.additional_gids {
            if !gids.contains(g) {
                gids.push(*g);
            }
        }
        let mut user = process.user().clone();
        user.set_additional_gids((!gids.is_empty()).then_some(gids));
        process.set_user(user);
        spec.set_process(Some(process));

        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut devices = linux.devices().clone().unwrap_or_default();
        let mut rules = linux.resources().as_ref().and_then(|r| r.devices().clone()).unwrap_or_default();
        for n in &self.device_nodes {
            devices.retain(|d| d.path() != &n.path);
            let mut d = oci::LinuxDevice::default();
            d.set_path(n.path.clone());
            d.set_typ(match n.kind {
                NodeKind::Char => oci::LinuxDeviceType::C,
                NodeKind::Block => oci::LinuxDeviceType::B,
                NodeKind::Fifo => oci::LinuxDeviceType::P,
            });
            d.set_major(n.major);
            d.set_minor(n.minor);
            d.set_file_mode(n.file_mode);
            d.set_uid(n.uid.or((uid > 0).then_some(uid)));
            d.set_gid(n.gid.or((gid > 0).then_some(gid)));
            devices.push(d);
            if n.kind != NodeKind::Fifo {
                let mut r = oci::LinuxDeviceCgroup::default();
                r.set_allow(true);
                r.set_typ(Some(if n.kind == NodeKind::Char { oci::LinuxDeviceType::C } else { oci::LinuxDeviceType::B }));
                r.set_major(Some(n.major));
                r.set_minor(Some(n.minor));
                r.set_access(Some(n.access.clone()));
                rules.push(r);
            }
        }
        linux.set_devices(Some(devices));
        let mut resources = linux.resources().clone().unwrap_or_default();
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
        spec.set_linux(Some(linux));

        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &self.mounts {
            mounts.retain(|x| x.destination() != &m.container_path);
            mounts.push(m.to_oci());
        }
        mounts.sort_by_key(|m| mount_depth(m.destination()));
        spec.set_mounts(Some(mounts));

        let mut hooks = spec.hooks().clone().unwrap_or_default();
        for phase in HookPhase::ALL {
            let mut list = phase.hooks(&hooks).to_vec();
            list.extend_from_slice(phase.hooks(&self.hooks));
            phase.set_hooks(&mut hooks, list);
        }
        spec.set_hooks(Some(hooks));
    }
}

/// The device-cgroup allow rules for `nodes`: one per char/block node with a non-empty access.
pub fn device_rules(nodes: &[DeviceNode]) -> Vec<DeviceRule> {
    nodes
        .iter()
        .filter(|n| n.kind != NodeKind::Fifo && !n.access.is_empty())
        .map(|n| DeviceRule { kind: n.kind, major: n.major, minor: n.minor, access: n.access.clone() })
        .collect()
}

/// A spec file that loaded and validated.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The file.
    pub path: PathBuf,
    /// The index of its directory in the list given to [`Registry::load`] (higher wins).
    pub priority: usize,
    /// Its content.
    pub spec: Spec,
    /// `vendor` of `kind`.
    pub vendor: String,
    /// `class` of `kind`.
    pub class: String,
}

/// Every device the spec directories define, by qualified name, and the errors met loading
/// them.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    specs: Vec<LoadedSpec>,
    /// Qualified name → (index into `specs`, index into its devices).
    devices: BTreeMap<String, (usize, usize)>,
    errors: Vec<String>,
}

/// Whether `path` (a spec directory or file) is fcsup's user's alone, as sshd's StrictModes
/// asks: owned by it, not writable by group or others, a file not a symlink. A spec's hooks
/// run as that user, so anyone who may change the spec may run code as root.
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        return Err("it is a symlink".into());
    }
    if meta.uid() != me {
        return Err(format!("it is owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("group or others may write it (mode {:o})", meta.mode() & 0o777));
    }
    Ok(())
}

impl Registry {
    /// Loads every spec in `dirs` (lowest priority first; a missing directory is skipped).
    /// Never fails as a whole: a bad directory or file is recorded in [`Registry::errors`].
    pub fn load<P: AsRef<Path>>(dirs: &[P]) -> Registry {
        let mut reg = Registry { dirs: dirs.iter().map(|d| d.as_ref().to_path_buf()).collect(), ..Registry::default() };
        let mut found: BTreeMap<String, Found> = BTreeMap::new();
        for (priority, dir) in dirs.iter().map(AsRef::as_ref).enumerate() {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    reg.errors.push(CdiError::ReadDir { dir: dir.to_path_buf(), source }.to_string());
                    continue;
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "yaml")))
                .collect();
            paths.sort();
            if let Err(why) = trusted(dir) {
                reg.errors.push(format!("{}: {why}: its specs are not used (their hooks would run as root)", dir.display()));
                continue;
            }
            for path in paths {
                if let Err(why) = trusted(&path) {
                    reg.errors.push(format!("{}: {why}: not used (its hooks would run as root)", path.display()));
                    continue;
                }
                let loaded = match read_spec(&path, priority) {
                    Ok(s) => s,
                    Err(e) => {
                        reg.errors.push(e.to_string());
                        continue;
                    }
                };
                let si = reg.specs.len();
                for (di, d) in loaded.spec.devices.iter().enumerate() {
                    let name = qualified(&loaded.vendor, &loaded.class, &d.name);
                    match found.get_mut(&name) {
                        Some(f) if f.priority > priority => {}
                        Some(f) if f.priority == priority => {
                            let first = reg.specs[f.at.0].path.clone();
                            reg.errors.push(CdiError::Conflict { name: name.clone(), first, second: path.clone() }.to_string());
                            f.conflict = true;
                        }
                        _ => {
                            found.insert(name, Found { priority, at: (si, di), conflict: false });
                        }
                    }
                }
                reg.specs.push(loaded);
            }
        }
        reg.devices = found.into_iter().filter(|(_, f)| !f.conflict).map(|(n, f)| (n, f.at)).collect();
        reg
    }

    /// Loads the default directories, [`DEFAULT_SPEC_DIRS`].
    pub fn load_default() -> Registry {
        Registry::load(&DEFAULT_SPEC_DIRS)
    }

    /// What went wrong loading (bad directories, bad files, conflicts), one line each.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The specs that loaded.
    pub fn specs(&self) -> &[LoadedSpec] {
        &self.specs
    }

    /// The directories searched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Every usable qualified device name, sorted.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// The spec file defining `name` (qualified), if any.
    pub fn spec_of(&self, name: &str) -> Option<&LoadedSpec> {
        self.devices.get(name).map(|(s, _)| &self.specs[*s])
    }

    /// Resolves the requested qualified names into the devices they mean, each once, in
    /// request order: `vendor/class=all` means a device named `all` when a spec defines one,
    /// else every device of that kind.
    pub fn lookup<S: AsRef<str>>(&self, requests: &[S]) -> Result<Vec<String>, CdiError> {
        let mut out: Vec<String> = Vec::new();
        let mut unresolved = Vec::new();
        for req in requests.iter().map(AsRef::as_ref) {
            let (vendor, class, name) = parse_qualified_name(req)?;
            let mut found: Vec<String> = Vec::new();
            if self.devices.contains_key(req) {
                found.push(req.to_string());
            } else if name == "all" {
                let prefix = format!("{vendor}/{class}=");
                found.extend(self.devices.keys().filter(|k| k.starts_with(&prefix)).cloned());
            }
            if found.is_empty() {
                unresolved.push(req.to_string());
            }
            for f in found {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        if !unresolved.is_empty() {
            return Err(CdiError::Unresolved { names: unresolved, dirs: self.dirs.clone(), spec_errors: self.errors.len() });
        }
        Ok(out)
    }

    /// Resolves `requests` and merges their edits in the reference order; device nodes get
    /// their type and numbers from `lstat` of the host node where the spec leaves them out.
    pub fn resolve<S: AsRef<str>>(&self, requests: &[S]) -> Result<ContainerEdits, CdiError> {
        let names = self.lookup(requests)?;
        let mut edits = ContainerEdits::default();
        let mut specs_done: HashSet<usize> = HashSet::new();
        for name in &names {
            let (si, di) = self.devices[name];
            let spec = &self.specs[si];
            let fail = |message: String| CdiError::Edit { device: name.clone(), path: spec.path.clone(), message };
            if specs_done.insert(si) {
                merge(&mut edits, &spec.spec.container_edits).map_err(fail)?;
            }
            merge(&mut edits, &spec.spec.devices[di].container_edits).map_err(fail)?;
        }
        edits.mounts.sort_by_key(|m| mount_depth(&m.container_path));
        Ok(edits)
    }
}

/// Where a device name was found while loading.
struct Found {
    /// Its directory's priority.
    priority: usize,
    /// (spec index, device index).
    at: (usize, usize),
    /// Whether another spec of the same priority defines it too.
    conflict: bool,
}

fn qualified(vendor: &str, class: &str, name: &str) -> String {
    format!("{vendor}/{class}={name}")
}

/// Reads, parses and validates one spec file.
pub fn read_spec(path: &Path, priority: usize) -> Result<LoadedSpec, CdiError> {
    let text = std::fs::read_to_string(path).map_err(|source| CdiError::Read { path: path.to_path_buf(), source })?;
    let spec = parse_spec(path, &text)?;
    let (vendor, class) = validate_spec(&spec).map_err(|message| CdiError::Invalid { path: path.to_path_buf(), message })?;
    Ok(LoadedSpec { path: path.to_path_buf(), priority, spec, vendor, class })
}

/// Parses spec text: JSON for a `.json` path, YAML otherwise.
pub fn parse_spec(path: &Path, text: &str) -> Result<Spec, CdiError> {
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| CdiError::Parse { path: path.to_path_buf(), message })
}

/// Checks a parsed spec as `Spec.validate` does; returns its vendor and class.
pub fn validate_spec(spec: &Spec) -> Result<(String, String), String> {
    validate_version(spec)?;
    let (vendor, class) = spec.kind.split_once('/').filter(|(v, c)| !v.is_empty() && !c.is_empty()).unwrap_or(("", &spec.kind));
    validate_vendor_or_class(vendor).map_err(|e| format!("invalid vendor in kind {:?}: {e}", spec.kind))?;
    validate_vendor_or_class(class).map_err(|e| format!("invalid class in kind {:?}: {e}", spec.kind))?;
    validate_edits(&spec.container_edits).map_err(|e| format!("invalid container edits: {e}"))?;
    let mut names = HashSet::new();
    for d in &spec.devices {
        validate_device_name(&d.name).map_err(|e| format!("failed to add device {:?}: {e}", d.name))?;
        if is_empty(&d.container_edits) {
            return Err(format!("failed to add device {:?}: invalid device, empty device edits", d.name));
        }
        validate_edits(&d.container_edits).map_err(|e| format!("failed to add device {:?}: invalid device {:?}: {e}", d.name, d.name))?;
        if !names.insert(d.name.as_str()) {
            return Err(format!("invalid spec, multiple device {:?}", d.name));
        }
    }
    if spec.devices.is_empty() {
        return Err("invalid spec, no devices".into());
    }
    Ok((vendor.to_string(), class.to_string()))
}

fn validate_version(spec: &Spec) -> Result<(), String> {
    let v = spec.cdi_version.strip_prefix('v').unwrap_or(&spec.cdi_version);
    let Some(have) = VERSIONS.iter().position(|k| *k == v) else {
        return Err(format!("invalid version {:?} (known: {})", spec.cdi_version, VERSIONS.join(", ")));
    };
    let need = required_version(spec);
    let need_idx = VERSIONS.iter().position(|k| *k == need).unwrap_or(VERSIONS.len());
    if need_idx < have {
        return Err(format!("the spec version must be at least v{need} for the fields it uses (it says {:?})", spec.cdi_version));
    }
    Ok(())
}

/// The lowest version the fields used need (`specs-go/version.go`).
fn required_version(spec: &Spec) -> &'static str {
    let all_edits = || std::iter::once(&spec.container_edits).chain(spec.devices.iter().map(|d| &d.container_edits));
    if all_edits().any(|e| !e.net_devices.is_empty() || e.intel_rdt.as_ref().is_some_and(|r| r.schemata.is_some() || r.enable_monitoring)) {
        return "1.1.0";
    }
    if all_edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
        return "0.7.0";
    }
    if !spec.annotations.is_empty()
        || spec.devices.iter().any(|d| !d.annotations.is_empty())
        || spec.kind.split_once('/').is_some_and(|(_, c)| c.contains('.'))
    {
        return "0.6.0";
    }
    if spec.devices.iter().any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
        || all_edits().any(|e| e.device_nodes.iter().any(|n| !n.host_path.is_empty()))
    {
        return "0.5.0";
    }
    if all_edits().any(|e| e.mounts.iter().any(|m| !m.fs_type.is_empty())) {
        return "0.4.0";
    }
    "0.3.0"
}

fn is_empty(e: &Edits) -> bool {
    e.env.is_empty()
        && e.device_nodes.is_empty()
        && e.hooks.is_empty()
        && e.mounts.is_empty()
        && e.additional_gids.is_empty()
        && e.intel_rdt.is_none()
        && e.net_devices.is_empty()
}

fn validate_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|v| v.find('=').is_none_or(|i| i == 0)) {
        Some(v) => Err(format!("invalid environment variable {v:?}")),
        None => Ok(()),
    }
}

fn validate_edits(e: &Edits) -> Result<(), String> {
    validate_env(&e.env)?;
    for n in &e.device_nodes {
        if n.path.is_empty() {
            return Err("invalid (empty) device path".into());
        }
        if !n.kind.is_empty() && NodeKind::parse(&n.kind).is_none() {
            return Err(format!("device {:?}: invalid type {:?}", n.path, n.kind));
        }
        if !n.permissions.is_empty() && n.permissions != "none" && !n.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(format!("device {:?}: invalid permissions {:?}", n.path, n.permissions));
        }
    }
    for h in &e.hooks {
        if HookPhase::from_name(&h.hook_name).is_none() {
            return Err(format!("invalid hook name {:?}", h.hook_name));
        }
        if h.path.is_empty() {
            return Err(format!("invalid hook {:?} with empty path", h.hook_name));
        }
        if !h.path.starts_with('/') {
            return Err(format!("invalid hook {:?}: path {:?} is not absolute", h.hook_name, h.path));
        }
        validate_env(&h.env).map_err(|e| format!("invalid hook {:?}: {e}", h.hook_name))?;
        if h.timeout.is_some_and(|t| t <= 0) {
            return Err(format!("invalid hook {:?}: timeout must be greater than zero", h.hook_name));
        }
    }
    for m in &e.mounts {
        if m.host_path.is_empty() {
            return Err("invalid mount, empty host path".into());
        }
        if m.container_path.is_empty() {
            return Err("invalid mount, empty container path".into());
        }
    }
    if let Some(r) = &e.intel_rdt {
        let c = &r.clos_id;
        if c != "/" && (c.len() >= 4096 || c == "." || c == ".." || c.contains(['/', '\n'])) {
            return Err("invalid ClosID".into());
        }
    }
    let (mut hosts, mut names) = (HashSet::new(), HashSet::new());
    for d in &e.net_devices {
        if d.host_interface_name.is_empty() {
            return Err("invalid linux net device, empty HostInterfaceName".into());
        }
        if d.name.is_empty() {
            return Err("invalid linux net device, empty Name".into());
        }
        if !hosts.insert(&d.host_interface_name) {
            return Err(format!("invalid linux net device, duplicate HostInterfaceName {:?}", d.host_interface_name));
        }
        if !names.insert(&d.name) {
            return Err(format!("invalid linux net device, duplicate Name {:?}", d.name));
        }
    }
    Ok(())
}

/// Vendor and class: a letter first, alphanumerics last, `_-.` allowed between.
fn validate_vendor_or_class(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let Some(&first) = b.first() else { return Err("empty name".into()) };
    if !first.is_ascii_alphabetic() {
        return Err(format!("{name:?}, should start with letter"));
    }
    if b.len() > 1 {
        if let Some(c) = b[1..b.len() - 1].iter().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))) {
            return Err(format!("invalid character {:?} in name {name:?}", char::from(*c)));
        }
        if !b[b.len() - 1].is_ascii_alphanumeric() {
            return Err(format!("{name:?}, should end with a letter or digit"));
        }
    }
    Ok(())
}

/// Device name: alphanumerics first and last, `_-.:` allowed between.
fn validate_device_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let Some(&first) = b.first() else { return Err("invalid (empty) device name".into()) };
    if !first.is_ascii_alphanumeric() {
        return Err(format!("invalid name {name:?}, should start with a letter or digit"));
    }
    if b.len() > 1 {
        if let Some(c) = b[1..b.len() - 1].iter().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'))) {
            return Err(format!("invalid character {:?} in device name {name:?}", char::from(*c)));
        }
        if !b[b.len() - 1].is_ascii_alphanumeric() {
            return Err(format!("invalid name {name:?}, should end with a letter or digit"));
        }
    }
    Ok(())
}

/// Splits `vendor/class=name` and checks each part (`parser.ParseQualifiedName`).
pub fn parse_qualified_name(device: &str) -> Result<(&str, &str, &str), CdiError> {
    let bad = |message: String| CdiError::BadName { name: device.to_string(), message };
    let parts = (!device.starts_with('/'))
        .then(|| device.split_once('='))
        .flatten()
        .filter(|(q, n)| !q.is_empty() && !n.is_empty())
        .and_then(|(q, n)| q.split_once('/').filter(|(v, c)| !v.is_empty() && !c.is_empty()).map(|(v, c)| (v, c, n)));
    let Some((vendor, class, name)) = parts else {
        return Err(bad("unqualified device: vendor, class or name missing".into()));
    };
    validate_vendor_or_class(vendor).map_err(|e| bad(format!("invalid vendor. {e}")))?;
    validate_vendor_or_class(class).map_err(|e| bad(format!("invalid class. {e}")))?;
    validate_device_name(name).map_err(bad)?;
    Ok((vendor, class, name))
}

fn add_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
        Some(slot) => *slot = entry.to_string(),
        None => env.push(entry.to_string()),
    }
}

/// The number of `/` in the cleaned path, the sort key of `orderedMounts`.
fn mount_depth(p: &Path) -> usize {
    let normal = p.components().filter(|c| matches!(c, Component::Normal(_))).count();
    if p.has_root() {
        normal.max(1)
    } else {
        normal.saturating_sub(1)
    }
}

/// Merges one spec's or device's edits into `out` (`ContainerEdits.Apply` onto an empty spec).
fn merge(out: &mut ContainerEdits, e: &Edits) -> Result<(), String> {
    if e.intel_rdt.is_some() {
        return Err("it asks for intelRdt (an Intel RDT class of service), which fcsup does not support".into());
    }
    if !e.net_devices.is_empty() {
        return Err("it asks for netDevices (host interfaces moved into the instance), which fcsup does not support".into());
    }
    for v in &e.env {
        add_env(&mut out.env, v);
    }
    for n in &e.device_nodes {
        let node = fill_device_node(n)?;
        out.device_nodes.retain(|d| d.path != node.path);
        out.device_nodes.push(node);
    }
    for m in &e.mounts {
        let cp = PathBuf::from(&m.container_path);
        out.mounts.retain(|x| x.container_path != cp);
        out.mounts.push(Mount { host_path: PathBuf::from(&m.host_path), container_path: cp, fs_type: m.fs_type.clone(), options: m.options.clone() });
    }
    for h in &e.hooks {
        let phase = HookPhase::from_name(&h.hook_name).ok_or_else(|| format!("unknown hook name {:?}", h.hook_name))?;
        let mut hook = oci::Hook::default();
        hook.set_path(PathBuf::from(&h.path));
        hook.set_args((!h.args.is_empty()).then(|| h.args.clone()));
        hook.set_env((!h.env.is_empty()).then(|| h.env.clone()));
        hook.set_timeout(h.timeout);
        let mut list = phase.hooks(&out.hooks).to_vec();
        list.push(hook);
        phase.set_hooks(&mut out.hooks, list);
    }
    for g in &e.additional_gids {
        if *g != 0 && !out.additional_gids.contains(g) {
            out.additional_gids.push(*g);
        }
    }
    Ok(())
}

/// Fills a device node's missing type, numbers and mode from `lstat` of its host path
/// (`DeviceNode.fillMissingInfo`): a node that gives its type and a major (or is a FIFO) may
/// have no host node; any other must have one.
fn fill_device_node(n: &SpecDeviceNode) -> Result<DeviceNode, String> {
    let host_path = if n.host_path.is_empty() { &n.path } else { &n.host_path };
    let minimal = !n.kind.is_empty() && (n.major != 0 || n.kind == "p");
    let mut kind = NodeKind::parse(&n.kind);
    let (mut major, mut minor, mut file_mode) = (n.major, n.minor, n.file_mode);
    match host_info(Path::new(host_path)) {
        Err(e) if !minimal => return Err(format!("failed to stat CDI host device {host_path:?}: {e}")),
        Err(_) => {}
        Ok((hkind, hmajor, hminor, hmode)) => {
            file_mode = file_mode.or(Some(hmode));
            if !minimal {
                let k = *kind.get_or_insert(hkind);
                if k != hkind {
                    return Err(format!("CDI device ({:?}, {host_path:?}), host type mismatch ({}, {})", n.path, n.kind, hkind.letter()));
                }
                if k != NodeKind::Fifo && major == 0 {
                    major = hmajor;
                    minor = hminor;
                }
            }
        }
    }
    let kind = kind.ok_or_else(|| format!("device {:?} has no type", n.path))?;
    let access = match n.permissions.as_str() {
        "" => "rwm".to_string(),
        "none" => String::new(),
        p => p.to_string(),
    };
    Ok(DeviceNode {
        path: PathBuf::from(&n.path),
        host_path: PathBuf::from(host_path),
        kind,
        major,
        minor,
        file_mode,
        access,
        uid: n.uid,
        gid: n.gid,
    })
}

/// Kind, major, minor and permission bits of a host device node (not following symlinks).
fn host_info(path: &Path) -> io::Result<(NodeKind, i64, i64, u32)> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        NodeKind::Char
    } else if ft.is_block_device() {
        NodeKind::Block
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        return Err(io::Error::other("not a device node"));
    };
    let rdev = md.rdev();
    Ok((kind, i64::from(libc::major(rdev)), i64::from(libc::minor(rdev)), md.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// The fixture of notes/gpu.md §6, with `/dev/null` and `/dev/zero` standing in for the
    /// fake GPUs (unit tests cannot mknod; tests/oci.rs does, as root).
    fn fixture(tmp: &Path) -> String {
        r#"cdiVersion: "0.6.0"
kind: example.com/fakegpu
devices:
  - {name: "0", containerEdits: {deviceNodes: [{path: /dev/fakegpu0, hostPath: /dev/null, permissions: rw}]}}
  - {name: "1", containerEdits: {deviceNodes: [{path: /dev/fakegpu1, hostPath: /dev/zero}]}}
containerEdits:
  env: [FAKEGPU_VISIBLE_DEVICES=0]
  mounts: [{hostPath: TMP/lib/libfake.so.1, containerPath: /usr/lib/libfake.so.1, options: [ro, nosuid, nodev, rbind, rprivate]}]
  hooks:
    - {hookName: createRuntime,   path: TMP/bin/hook-recorder, args: [hook-recorder, createRuntime, TMP/out]}
    - {hookName: createContainer, path: TMP/bin/hook-recorder, args: [hook-recorder, createContainer, TMP/out], env: [HOOK_TEST=1]}
    - {hookName: poststart,       path: TMP/bin/hook-recorder, args: [hook-recorder, poststart, TMP/out]}
    - {hookName: poststop,        path: TMP/bin/hook-recorder, args: [hook-recorder, poststop, TMP/out], timeout: 5}
"#
        .replace("TMP", &tmp.display().to_string())
    }

    /// What `nvidia-ctk cdi generate` writes (v1.20, two GPUs, index + uuid names), trimmed.
    const NVIDIA: &str = r#"---
cdiVersion: 0.5.0
containerEdits:
  env:
  - NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidia-modeset
  - path: /dev/nvidia-uvm-tools
  - path: /dev/nvidia-uvm
  - path: /dev/nvidiactl
  hooks:
  - args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link
    - libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
    env:
    - NVIDIA_CTK_DEBUG=false
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  - args:
    - nvidia-cdi-hook
    - update-ldcache
    - --folder
    - /usr/lib/x86_64-linux-gnu
    env:
    - NVIDIA_CTK_DEBUG=false
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  mounts:
  - containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06
    hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06
    options:
    - ro
    - nosuid
    - nodev
    - rbind
    - rprivate
  - containerPath: /usr/bin/nvidia-smi
    hostPath: /usr/bin/nvidia-smi
    options:
    - ro
    - nosuid
    - nodev
    - rbind
    - rprivate
  - containerPath: /run/nvidia-persistenced/socket
    hostPath: /run/nvidia-persistenced/socket
    options:
    - ro
    - nosuid
    - nodev
    - rbind
    - rprivate
    - noexec
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
  name: "1"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
  name: all
kind: nvidia.com/gpu
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn spec(text: &str) -> Spec {
        parse_spec(Path::new("t.yaml"), text).unwrap()
    }

    fn invalid(text: &str) -> String {
        match parse_spec(Path::new("t.yaml"), text) {
            Err(e) => e.to_string(),
            Ok(s) => validate_spec(&s).expect_err("spec should be invalid"),
        }
    }

    #[test]
    fn fixture_resolves_with_nodes_from_stat() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cdi");
        write(&dir, "fake.yaml", &fixture(tmp.path()));
        let reg = Registry::load(&[&dir]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        assert_eq!(reg.device_names(), ["example.com/fakegpu=0", "example.com/fakegpu=1"]);
        let e = reg.resolve(&["example.com/fakegpu=0"]).unwrap();
        assert_eq!(e.env, ["FAKEGPU_VISIBLE_DEVICES=0"]);
        assert_eq!(e.device_nodes.len(), 1);
        let n = &e.device_nodes[0];
        assert_eq!(
            (n.path.as_path(), n.host_path.as_path(), n.kind, n.major, n.minor),
            (Path::new("/dev/fakegpu0"), Path::new("/dev/null"), NodeKind::Char, 1, 3)
        );
        assert_eq!(n.access, "rw");
        assert!(n.file_mode.is_some());
        assert_eq!(e.device_rules(), [DeviceRule { kind: NodeKind::Char, major: 1, minor: 3, access: "rw".into() }]);
        assert_eq!(e.mounts.len(), 1);
        assert!(e.mounts[0].is_bind());
        assert_eq!(e.mounts[0].host_path, tmp.path().join("lib/libfake.so.1"));
        let cc = HookPhase::CreateContainer.hooks(&e.hooks);
        assert_eq!(cc.len(), 1);
        assert_eq!(cc[0].path(), &tmp.path().join("bin/hook-recorder"));
        assert_eq!(cc[0].env().as_deref().unwrap(), ["HOOK_TEST=1"]);
        assert_eq!(cc[0].args().as_deref().unwrap()[..2], ["hook-recorder".to_string(), "createContainer".to_string()]);
        assert_eq!(HookPhase::CreateRuntime.hooks(&e.hooks).len(), 1);
        assert_eq!(HookPhase::Poststop.hooks(&e.hooks)[0].timeout(), Some(5));
        assert!(HookPhase::Prestart.hooks(&e.hooks).is_empty());
        // Device 1's node: no permissions means rwm.
        let e = reg.resolve(&["example.com/fakegpu=1"]).unwrap();
        assert_eq!((e.device_nodes[0].major, e.device_nodes[0].minor, e.device_nodes[0].access.as_str()), (1, 5, "rwm"));
    }

    #[test]
    fn all_expands_to_every_device_of_the_kind_and_spec_edits_apply_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cdi");
        write(&dir, "fake.yaml", &fixture(tmp.path()));
        let reg = Registry::load(&[&dir]);
        assert_eq!(reg.lookup(&["example.com/fakegpu=all"]).unwrap(), ["example.com/fakegpu=0", "example.com/fakegpu=1"]);
        let e = reg.resolve(&["example.com/fakegpu=all", "example.com/fakegpu=0"]).unwrap();
        let paths: Vec<_> = e.device_nodes.iter().map(|n| n.path.display().to_string()).collect();
        assert_eq!(paths, ["/dev/fakegpu0", "/dev/fakegpu1"]);
        assert_eq!(HookPhase::CreateContainer.hooks(&e.hooks).len(), 1, "spec-level hooks once");
        assert_eq!(e.env, ["FAKEGPU_VISIBLE_DEVICES=0"]);
    }

    #[test]
    fn nvidia_generated_spec_loads_and_resolves_names() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "nvidia.yaml", NVIDIA);
        let reg = Registry::load(&[tmp.path()]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        assert_eq!(reg.device_names().len(), 4);
        // The spec defines `all` itself: that device is used, not an expansion.
        assert_eq!(reg.lookup(&["nvidia.com/gpu=all"]).unwrap(), ["nvidia.com/gpu=all"]);
        assert_eq!(reg.lookup(&["nvidia.com/gpu=GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c"]).unwrap().len(), 1);
        let s = &reg.specs()[0];
        assert_eq!((s.vendor.as_str(), s.class.as_str()), ("nvidia.com", "gpu"));
        assert_eq!(s.spec.container_edits.hooks.len(), 2);
        if !Path::new("/dev/nvidiactl").exists() && !Path::new("/dev/nvidia-modeset").exists() {
            let e = reg.resolve(&["nvidia.com/gpu=0"]).unwrap_err().to_string();
            assert!(e.contains("CDI device nvidia.com/gpu=0") && e.contains("failed to stat CDI host device \"/dev/nvidia-modeset\""), "{e}");
        }
    }

    #[test]
    fn merge_follows_the_reference_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cdi");
        write(
            &dir,
            "a.yaml",
            r#"cdiVersion: 0.7.0
kind: vendor.com/a
containerEdits:
  env: [A=spec, SHARED=a]
  deviceNodes: [{path: /dev/x, type: c, major: 240, minor: 1, permissions: none}]
  mounts: [{hostPath: /h/deep, containerPath: /a/b/c}, {hostPath: /h/top, containerPath: /a}]
  hooks: [{hookName: prestart, path: /bin/p1}]
  additionalGids: [0, 44, 44]
devices:
  - name: d1
    containerEdits:
      env: [D1=1, SHARED=d1]
      deviceNodes: [{path: /dev/x, type: b, major: 8, minor: 0, permissions: r}]
      mounts: [{hostPath: /h/other, containerPath: /a/b/c}]
      hooks: [{hookName: prestart, path: /bin/p2}, {hookName: startContainer, path: /bin/s}]
  - name: d2
    containerEdits:
      env: [D2=2]
      deviceNodes: [{path: /dev/fifo, type: p}]
      additionalGids: [45]
"#,
        );
        write(
            &dir,
            "b.json",
            r#"{"cdiVersion":"1.0.0","kind":"other.org/b","devices":[{"name":"x","containerEdits":{"env":["SHARED=b"],"hooks":[{"hookName":"prestart","path":"/bin/p3"}]}}]}"#,
        );
        let reg = Registry::load(&[&dir]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        let e = reg.resolve(&["vendor.com/a=d1", "other.org/b=x", "vendor.com/a=d2"]).unwrap();
        assert_eq!(e.env, ["A=spec", "SHARED=b", "D1=1", "D2=2"]);
        let nodes: Vec<_> = e.device_nodes.iter().map(|n| (n.path.display().to_string(), n.kind, n.major, n.access.clone())).collect();
        assert_eq!(
            nodes,
            [("/dev/x".to_string(), NodeKind::Block, 8, "r".to_string()), ("/dev/fifo".to_string(), NodeKind::Fifo, 0, "rwm".to_string())]
        );
        assert_eq!(e.device_rules(), [DeviceRule { kind: NodeKind::Block, major: 8, minor: 0, access: "r".into() }]);
        let mounts: Vec<_> = e.mounts.iter().map(|m| (m.container_path.display().to_string(), m.host_path.display().to_string())).collect();
        assert_eq!(mounts, [("/a".to_string(), "/h/top".to_string()), ("/a/b/c".to_string(), "/h/other".to_string())]);
        let pre: Vec<_> = HookPhase::Prestart.hooks(&e.hooks).iter().map(|h| h.path().display().to_string()).collect();
        assert_eq!(pre, ["/bin/p1", "/bin/p2", "/bin/p3"]);
        assert_eq!(HookPhase::StartContainer.hooks(&e.hooks).len(), 1);
        assert_eq!(e.additional_gids, [44, 45]);
    }

    #[test]
    fn apply_to_spec_edits_an_oci_spec_like_the_reference() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "f.yaml", &fixture(tmp.path()));
        let e = Registry::load(&[tmp.path()]).resolve(&["example.com/fakegpu=0"]).unwrap();
        let mut spec = oci::Spec::default();
        let mut process = oci::Process::default();
        process.set_env(Some(vec!["PATH=/bin".into(), "FAKEGPU_VISIBLE_DEVICES=old".into()]));
        let mut user = oci::User::default();
        user.set_uid(1000);
        user.set_gid(1000);
        process.set_user(user);
        spec.set_process(Some(process));
        let mut existing = oci::Mount::default();
        existing.set_destination(PathBuf::from("/usr/lib/libfake.so.1"));
        spec.set_mounts(Some(vec![existing]));
        e.apply_to_spec(&mut spec);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.env().as_deref().unwrap(), ["PATH=/bin", "FAKEGPU_VISIBLE_DEVICES=0"]);
        let dev = &spec.linux().as_ref().unwrap().devices().as_ref().unwrap()[0];
        assert_eq!((dev.major(), dev.minor(), dev.uid(), dev.gid()), (1, 3, Some(1000), Some(1000)));
        let rules = spec.linux().as_ref().unwrap().resources().as_ref().unwrap().devices().clone().unwrap();
        assert!(rules.iter().any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3) && r.access().as_deref() == Some("rw")));
        let mounts = spec.mounts().as_ref().unwrap();
        let libfake: Vec<_> = mounts.iter().filter(|m| m.destination() == Path::new("/usr/lib/libfake.so.1")).collect();
        assert_eq!(libfake.len(), 1, "a CDI mount replaces one with the same destination");
        assert_eq!(libfake[0].options().as_deref().unwrap()[0], "ro");
        let depths: Vec<_> = mounts.iter().map(|m| mount_depth(m.destination())).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");
        assert_eq!(spec.hooks().as_ref().unwrap().create_container().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn bad_specs_are_refused_with_the_rule_they_break() {
        let ok = "cdiVersion: 0.6.0\nkind: vendor.com/c\ndevices: [{name: d, containerEdits: {env: [A=1]}}]\n";
        spec(ok);
        assert!(validate_spec(&spec(ok)).is_ok_and(|(v, c)| v == "vendor.com" && c == "c"));
        let cases = [
            (ok.replace("env: [A=1]", "env: [A=1], bogus: 1"), "unknown field"),
            (ok.replace("0.6.0", "0.9.0"), "invalid version"),
            (ok.replace("0.6.0", "0.2.0"), "at least v0.3.0"),
            (ok.replace("kind: vendor.com/c", "kind: vendor.com"), "invalid vendor"),
            (ok.replace("kind: vendor.com/c", "kind: vendor.com/c/d"), "invalid class"),
            (ok.replace("kind: vendor.com/c", "kind: 1vendor/c"), "should start with letter"),
            (ok.replace("name: d,", "name: -d,"), "should start with a letter or digit"),
            (ok.replace("name: d,", "name: \"d/x\","), "invalid character '/'"),
            (ok.replace("{env: [A=1]}", "{}"), "empty device edits"),
            (ok.replace("A=1", "=1"), "invalid environment variable"),
            (ok.replace("devices: [{name: d, containerEdits: {env: [A=1]}}]", "devices: []"), "no devices"),
            (ok.replace("}}]", "}}, {name: d, containerEdits: {env: [B=1]}}]"), "multiple device \"d\""),
            (ok.replace("env: [A=1]", "hooks: [{hookName: preStart, path: /bin/x}]"), "invalid hook name \"preStart\""),
            (ok.replace("env: [A=1]", "hooks: [{hookName: prestart, path: bin/x}]"), "is not absolute"),
            (ok.replace("env: [A=1]", "hooks: [{hookName: prestart, path: /bin/x, timeout: 0}]"), "greater than zero"),
            (ok.replace("env: [A=1]", "deviceNodes: [{path: /dev/x, permissions: rwx}]"), "invalid permissions"),
            (ok.replace("env: [A=1]", "deviceNodes: [{path: /dev/x, type: z}]"), "invalid type"),
            (ok.replace("env: [A=1]", "mounts: [{hostPath: /a, containerPath: \"\"}]"), "empty container path"),
            (ok.replace("0.6.0", "0.4.0").replace("env: [A=1]", "deviceNodes: [{path: /dev/x, hostPath: /dev/y}]"), "at least v0.5.0"),
            (ok.replace("env: [A=1]", "additionalGids: [5]"), "at least v0.7.0"),
            (ok.replace("env: [A=1]", "netDevices: [{hostInterfaceName: eth1, name: net0}]"), "at least v1.1.0"),
            (ok.replace("0.6.0", "0.5.0").replace("kind: vendor.com/c", "kind: vendor.com/c.d"), "at least v0.6.0"),
        ];
        for (text, want) in cases {
            let got = invalid(&text);
            assert!(got.contains(want), "{text}\nwanted {want:?}, got {got}");
        }
    }

    #[test]
    fn a_bad_file_is_skipped_and_reported_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cdi");
        write(&dir, "good.yaml", "cdiVersion: 0.6.0\nkind: vendor.com/c\ndevices: [{name: d, containerEdits: {env: [A=1]}}]\n");
        let bad = write(&dir, "bad.yaml", "cdiVersion: 0.6.0\nkind: vendor.com/e\ndevices: [{name: d, containerEdits: {env: [A=1]}, extra: 1}]\n");
        let broken = write(&dir, "broken.json", "{\"cdiVersion\": ");
        write(&dir, "ignored.txt", "not a spec");
        fs::create_dir(dir.join("sub.yaml")).unwrap();
        let reg = Registry::load(&[dir.as_path(), tmp.path().join("missing").as_path()]);
        assert_eq!(reg.device_names(), ["vendor.com/c=d"]);
        assert_eq!(reg.errors().len(), 2, "{:?}", reg.errors());
        assert!(reg.errors().iter().any(|e| e.contains(&bad.display().to_string()) && e.contains("extra")), "{:?}", reg.errors());
        assert!(reg.errors().iter().any(|e| e.contains(&broken.display().to_string())), "{:?}", reg.errors());
        let e = reg.resolve(&["vendor.com/e=d"]).unwrap_err().to_string();
        assert!(e.contains("unresolvable CDI devices vendor.com/e=d") && e.contains("2 spec file(s) were skipped"), "{e}");
    }

    #[test]
    fn later_directories_override_and_equal_priority_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let (etc, run) = (tmp.path().join("etc"), tmp.path().join("run"));
        let one = |v: &str| {
            format!("cdiVersion: 0.6.0\nkind: vendor.com/c\ndevices: [{{name: d, containerEdits: {{env: [FROM={v}]}}}}, {{name: {v}, containerEdits: {{env: [X=1]}}}}]\n")
        };
        write(&etc, "a.yaml", &one("etc"));
        write(&run, "a.yaml", &one("run"));
        let reg = Registry::load(&[&etc, &run]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        assert_eq!(reg.resolve(&["vendor.com/c=d"]).unwrap().env, ["FROM=run"]);
        assert_eq!(reg.spec_of("vendor.com/c=d").unwrap().path, run.join("a.yaml"));
        // Order of the list decides, not the names.
        let reg = Registry::load(&[&run, &etc]);
        assert_eq!(reg.resolve(&["vendor.com/c=d"]).unwrap().env, ["FROM=etc"]);

        write(&run, "b.yaml", &one("b"));
        let reg = Registry::load(&[&etc, &run]);
        assert!(reg.spec_of("vendor.com/c=d").is_none(), "conflicting device dropped");
        assert!(reg.errors()[0].contains("conflicting CDI device vendor.com/c=d"), "{:?}", reg.errors());
        assert!(reg.spec_of("vendor.com/c=b").is_some() && reg.spec_of("vendor.com/c=run").is_some());
    }

    #[test]
    fn requested_names_are_checked() {
        let reg = Registry::default();
        for bad in ["gpu0", "nvidia.com/gpu", "nvidia.com=0", "/dev/nvidia0", "nvidia.com/gpu=", "nvidia.com/gpu=0=1", "nvidia.com/-gpu=0"] {
            let e = reg.lookup(&[bad]).unwrap_err();
            assert!(matches!(e, CdiError::BadName { .. }), "{bad}: {e}");
        }
        assert_eq!(parse_qualified_name("nvidia.com/gpu=MIG-1:2").unwrap(), ("nvidia.com", "gpu", "MIG-1:2"));
        let e = reg.lookup(&["nvidia.com/gpu=0", "nvidia.com/gpu=all"]).unwrap_err().to_string();
        assert!(e.starts_with("unresolvable CDI devices nvidia.com/gpu=0, nvidia.com/gpu=all"), "{e}");
    }

    #[test]
    fn unsupported_edits_are_refused_when_requested() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "r.yaml", "cdiVersion: 1.1.0\nkind: vendor.com/r\ndevices:\n- {name: rdt, containerEdits: {intelRdt: {closID: gpu}}}\n- {name: net, containerEdits: {netDevices: [{hostInterfaceName: eth1, name: net0}]}}\n- {name: ok, containerEdits: {env: [A=1]}}\n");
        let reg = Registry::load(&[tmp.path()]);
        assert!(reg.errors().is_empty(), "{:?}", reg.errors());
        assert!(reg.resolve(&["vendor.com/r=rdt"]).unwrap_err().to_string().contains("intelRdt"));
        assert!(reg.resolve(&["vendor.com/r=net"]).unwrap_err().to_string().contains("netDevices"));
        assert_eq!(reg.resolve(&["vendor.com/r=ok"]).unwrap().env, ["A=1"]);
    }

    #[test]
    fn device_nodes_fill_from_the_host_or_must_be_fully_given() {
        let n = |path: &str, kind: &str, major: i64| SpecDeviceNode { path: path.into(), kind: kind.into(), major, ..Default::default() };
        let full = fill_device_node(&n("/dev/absent-node", "c", 195)).unwrap();
        assert_eq!((full.kind, full.major, full.file_mode), (NodeKind::Char, 195, None));
        let e = fill_device_node(&n("/dev/absent-node", "c", 0)).unwrap_err();
        assert!(e.contains("failed to stat CDI host device \"/dev/absent-node\""), "{e}");
        let e = fill_device_node(&n("/dev/null", "b", 0)).unwrap_err();
        assert!(e.contains("host type mismatch (b, c)"), "{e}");
        let e = fill_device_node(&n("/etc/hostname", "", 0)).unwrap_err();
        assert!(e.contains("not a device node"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        let f = fill_device_node(&n(fifo.to_str().unwrap(), "", 0)).unwrap();
        assert_eq!((f.kind, f.file_mode), (NodeKind::Fifo, Some(0o640)));
        assert!(device_rules(&[f]).is_empty());
    }

    #[test]
    fn mount_depth_counts_slashes_of_the_clean_path() {
        assert_eq!(mount_depth(Path::new("/")), 1);
        assert_eq!(mount_depth(Path::new("/a")), 1);
        assert_eq!(mount_depth(Path::new("/a/b/")), 2);
        assert_eq!(mount_depth(Path::new("/a//b/c")), 3);
    }
}
