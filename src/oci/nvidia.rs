//! NVIDIA's legacy path, for GPUs no CDI spec names: `nvidia-container-runtime-hook prestart`
//! as an OCI `prestart` hook. The hook reads the state on stdin and `<bundle>/config.json`
//! (`process.env`, `root.path`, `mounts`, `capabilities.bounding`), then execs
//! `nvidia-container-cli configure --pid=PID ROOTFS`, which mounts the driver's libraries and
//! the GPUs' device nodes into the instance (nvidia-container-toolkit v1.20,
//! `cmd/nvidia-container-runtime-hook`).
//!
//! [`legacy_hook`] turns a function's environment and the GPUs granted to it into that hook
//! entry and the environment `config.json` must carry. fcsup decides which GPUs an instance
//! gets: `NVIDIA_VISIBLE_DEVICES` is rewritten to the granted ones, and a function asking for
//! others is refused. Everything the hook itself would reject (an unknown driver capability,
//! MIG configuration in an unprivileged instance) is refused here first, with a clear message.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hook;

/// The hook's executable name.
pub const HOOK_BINARY: &str = "nvidia-container-runtime-hook";

/// Where the toolkit's packages install it, looked at after `PATH`.
pub const FALLBACK_DIR: &str = "/usr/bin";

/// The driver capabilities the hook accepts (`all` means every one).
pub const DRIVER_CAPABILITIES: [&str; 7] = ["compute", "compat32", "graphics", "utility", "video", "display", "ngx"];

/// `PATH` given to the hook when the supervisor has none; the hook adds these itself too.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of preparing the legacy hook; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NvidiaError {
    /// The hook binary is not installed.
    #[error("{HOOK_BINARY} was not found on PATH ({}) nor in {FALLBACK_DIR}: install the NVIDIA Container Toolkit (packages nvidia-container-toolkit and libnvidia-container-tools from NVIDIA's repository nvidia.github.io/libnvidia-container), or give the GPUs a CDI spec instead (nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml)", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))]
    HookNotFound {
        /// The directories looked in.
        searched: Vec<PathBuf>,
    },
    /// The function asks for GPUs it was not granted.
    #[error("NVIDIA_VISIBLE_DEVICES={requested} asks for GPU(s) {} that this function was not granted (granted: {}); remove the variable or ask only for granted GPUs", missing.join(","), granted.join(","))]
    NotGranted {
        /// The function's value.
        requested: String,
        /// The ones not granted.
        missing: Vec<String>,
        /// What was granted.
        granted: Vec<String>,
    },
    /// A variable the hook would refuse.
    #[error("{name}={value}: {message}")]
    BadVariable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why.
        message: String,
    },
}

/// The hook entry for `config.json`'s `hooks.prestart` and the `process.env` entries the
/// hook reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyHook {
    /// `{path: <found>, args: [nvidia-container-runtime-hook, prestart], env: [PATH=...]}`.
    pub hook: Hook,
    /// `NAME=VALUE` entries for `config.json`'s `process.env`: `NVIDIA_VISIBLE_DEVICES` set
    /// to the granted GPUs, and the function's other variables the hook reads.
    pub env: Vec<String>,
}

/// Finds the hook binary: each directory of `path` (the supervisor's `PATH`), then
/// [`FALLBACK_DIR`].
pub fn find_hook(path: Option<&OsStr>) -> Result<PathBuf, NvidiaError> {
    let mut searched: Vec<PathBuf> = path.map(|p| std::env::split_paths(p).filter(|d| d.is_absolute()).collect()).unwrap_or_default();
    if !searched.iter().any(|d| d == Path::new(FALLBACK_DIR)) {
        searched.push(PathBuf::from(FALLBACK_DIR));
    }
    searched
        .iter()
        .map(|d| d.join(HOOK_BINARY))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or(NvidiaError::HookNotFound { searched })
}

/// Whether a variable of the function's environment is one the hook (or the CLI through
/// it) reads, and so belongs in `config.json`.
fn hook_reads(name: &str) -> bool {
    name.starts_with("NVIDIA_") || name == "CUDA_VERSION"
}

/// The legacy hook for a function with environment `function_env` granted the GPUs
/// `granted` (as `nvidia-container-cli --device` takes them: indices, `GPU-<uuid>`,
/// `MIG-...`). `None` when there is nothing to do: no GPU granted, or the function set
/// `NVIDIA_VISIBLE_DEVICES` to `void` or empty (which tells the hook to do nothing).
///
/// `path` is the supervisor's `PATH`: the hook is looked for there and gets it, since it
/// finds `nvidia-container-cli` through it. `privileged` is whether the instance's bounding
/// set has `CAP_SYS_ADMIN`: only then may it set the MIG configuration variables.
pub fn legacy_hook(
    function_env: &BTreeMap<String, String>,
    granted: &[String],
    path: Option<&OsStr>,
    privileged: bool,
) -> Result<Option<LegacyHook>, NvidiaError> {
    if granted.is_empty() {
        return Ok(None);
    }
    let visible = match function_env.get("NVIDIA_VISIBLE_DEVICES").map(|v| v.trim()) {
        None | Some("all") => granted.join(","),
        Some("" | "void") => return Ok(None),
        Some("none") => "none".to_string(),
        Some(list) => {
            let missing: Vec<String> = list.split(',').map(str::trim).filter(|d| !granted.iter().any(|g| g == d)).map(String::from).collect();
            if !missing.is_empty() {
                return Err(NvidiaError::NotGranted { requested: list.to_string(), missing, granted: granted.to_vec() });
            }
            list.split(',').map(str::trim).collect::<Vec<_>>().join(",")
        }
    };
    if let Some(caps) = function_env.get("NVIDIA_DRIVER_CAPABILITIES") {
        let unknown: Vec<&str> =
            caps.split(',').map(str::trim).filter(|c| !c.is_empty() && *c != "all" && !DRIVER_CAPABILITIES.contains(c)).collect();
        if !unknown.is_empty() {
            return Err(NvidiaError::BadVariable {
                name: "NVIDIA_DRIVER_CAPABILITIES".into(),
                value: caps.clone(),
                message: format!("unsupported capabilities {} (supported: all, {})", unknown.join(","), DRIVER_CAPABILITIES.join(",")),
            });
        }
    }
    for name in ["NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES"] {
        match function_env.get(name) {
            Some(v) if !privileged && !v.is_empty() => {
                return Err(NvidiaError::BadVariable {
                    name: name.into(),
                    value: v.clone(),
                    message: "only a privileged instance (CAP_SYS_ADMIN) may set it".into(),
                });
            }
            _ => {}
        }
    }
    let hook_path = find_hook(path)?;
    let mut env = vec![format!("NVIDIA_VISIBLE_DEVICES={visible}")];
    env.extend(function_env.iter().filter(|(k, _)| hook_reads(k) && *k != "NVIDIA_VISIBLE_DEVICES").map(|(k, v)| format!("{k}={v}")));
    let path_value = path.and_then(OsStr::to_str).filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH);
    let mut hook = Hook::default();
    hook.set_path(hook_path);
    hook.set_args(Some(vec![HOOK_BINARY.to_string(), "prestart".to_string()]));
    hook.set_env(Some(vec![format!("PATH={path_value}")]));
    Ok(Some(LegacyHook { hook, env }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn fake_hook_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(HOOK_BINARY);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn hook_entry_and_env_for_granted_gpus() {
        let d = fake_hook_dir();
        let path = std::env::join_paths([Path::new("/nonexistent"), d.path()]).unwrap();
        let fenv = env(&[("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"), ("NVIDIA_REQUIRE_CUDA", "cuda>=12.4"), ("SECRET", "x")]);
        let h = legacy_hook(&fenv, &["0".into(), "1".into()], Some(&path), false).unwrap().unwrap();
        assert_eq!(h.hook.path(), &d.path().join(HOOK_BINARY));
        assert_eq!(h.hook.args().as_deref().unwrap(), ["nvidia-container-runtime-hook", "prestart"]);
        assert_eq!(h.hook.env().as_deref().unwrap(), [format!("PATH={}", path.to_str().unwrap())]);
        assert_eq!(h.env, ["NVIDIA_VISIBLE_DEVICES=0,1", "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"]);
    }

    #[test]
    fn visible_devices_is_checked_against_the_grant() {
        let d = fake_hook_dir();
        let path = d.path().as_os_str();
        let g = ["0".to_string(), "GPU-abc".to_string()];
        let h = legacy_hook(&env(&[("NVIDIA_VISIBLE_DEVICES", "GPU-abc")]), &g, Some(path), false).unwrap().unwrap();
        assert_eq!(h.env[0], "NVIDIA_VISIBLE_DEVICES=GPU-abc");
        let h = legacy_hook(&env(&[("NVIDIA_VISIBLE_DEVICES", "none")]), &g, Some(path), false).unwrap().unwrap();
        assert_eq!(h.env[0], "NVIDIA_VISIBLE_DEVICES=none");
        for off in ["void", ""] {
            assert!(legacy_hook(&env(&[("NVIDIA_VISIBLE_DEVICES", off)]), &g, Some(path), false).unwrap().is_none());
        }
        assert!(legacy_hook(&env(&[]), &[], Some(path), false).unwrap().is_none());
        let e = legacy_hook(&env(&[("NVIDIA_VISIBLE_DEVICES", "0,3")]), &g, Some(path), false).unwrap_err();
        assert!(e.to_string().contains("asks for GPU(s) 3 that this function was not granted (granted: 0,GPU-abc)"), "{e}");
    }

    #[test]
    fn what_the_hook_would_reject_is_rejected_first() {
        let d = fake_hook_dir();
        let path = d.path().as_os_str();
        let g = ["0".to_string()];
        let e = legacy_hook(&env(&[("NVIDIA_DRIVER_CAPABILITIES", "compute,gaming")]), &g, Some(path), false).unwrap_err();
        assert!(e.to_string().contains("unsupported capabilities gaming"), "{e}");
        let e = legacy_hook(&env(&[("NVIDIA_MIG_CONFIG_DEVICES", "all")]), &g, Some(path), false).unwrap_err();
        assert!(e.to_string().contains("only a privileged instance"), "{e}");
        let h = legacy_hook(&env(&[("NVIDIA_MIG_CONFIG_DEVICES", "all")]), &g, Some(path), true).unwrap().unwrap();
        assert!(h.env.contains(&"NVIDIA_MIG_CONFIG_DEVICES=all".to_string()));
    }

    #[test]
    fn missing_hook_says_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let e = find_hook(Some(empty.path().as_os_str()));
        if Path::new(FALLBACK_DIR).join(HOOK_BINARY).exists() {
            return; // the toolkit is installed on this host
        }
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("install the NVIDIA Container Toolkit") && e.contains(&empty.path().display().to_string()) && e.contains("/usr/bin"),
            "{e}"
        );
    }
}
