//! The per-instance OCI bundle: a private directory holding the `config.json` that OCI hooks
//! read. fcsup does not run an OCI runtime, so the file only has to carry what hooks read:
//! `nvidia-container-runtime-hook` needs `ociVersion`, `process` (`env`, and
//! `capabilities.bounding`, where `CAP_SYS_ADMIN` means privileged) and `root` non-null, an
//! absolute `root.path` (it resolves a relative one against its own cwd), and `mounts`;
//! NVIDIA's CDI hooks read `root.path` (joined to the bundle when relative).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Hooks, LinuxCapabilities, Mount, Process, Root, Spec, User};

use super::hooks::OCI_VERSION;

/// The file name hooks look for in the bundle.
pub const CONFIG_FILE: &str = "config.json";

/// Errors writing or removing a bundle; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The configuration cannot describe an instance as hooks expect.
    #[error("bundle {path}: {message}")]
    Invalid {
        /// The bundle directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What an instance's `config.json` says.
#[derive(Debug, Clone, Default)]
pub struct BundleConfig {
    /// The instance's root directory on the host; must be absolute.
    pub root: PathBuf,
    /// Whether the root is read-only.
    pub root_readonly: bool,
    /// The function's command line.
    pub args: Vec<String>,
    /// `NAME=VALUE` entries hooks should see as the instance's environment.
    pub env: Vec<String>,
    /// The function's working directory, inside the instance.
    pub cwd: PathBuf,
    /// The instance process's uid and gid (inside the instance).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The instance's bounding capability set.
    pub bounding: Capabilities,
    /// The instance's mounts.
    pub mounts: Vec<Mount>,
    /// Hooks, by phase.
    pub hooks: Hooks,
    /// Annotations.
    pub annotations: HashMap<String, String>,
}

impl BundleConfig {
    /// The OCI spec for this configuration.
    pub fn to_spec(&self) -> Spec {
        let mut user = User::default();
        user.set_uid(self.uid);
        user.set_gid(self.gid);
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(self.bounding.clone()));
        caps.set_effective(None);
        caps.set_inheritable(None);
        caps.set_permitted(None);
        caps.set_ambient(None);
        let mut process = Process::default();
        process.set_terminal(None);
        process.set_user(user);
        process.set_args(Some(self.args.clone()));
        process.set_env(Some(self.env.clone()));
        process.set_cwd(if self.cwd.as_os_str().is_empty() { PathBuf::from("/") } else { self.cwd.clone() });
        process.set_capabilities(Some(caps));
        process.set_rlimits(None);
        process.set_no_new_privileges(None);
        let mut root = Root::default();
        root.set_path(self.root.clone());
        root.set_readonly(Some(self.root_readonly));
        let mut spec = Spec::default();
        spec.set_version(OCI_VERSION.to_string());
        spec.set_root(Some(root));
        spec.set_process(Some(process));
        spec.set_hostname(None);
        spec.set_linux(None);
        spec.set_mounts(Some(self.mounts.clone()));
        spec.set_hooks(Some(self.hooks.clone()));
        spec.set_annotations(Some(self.annotations.clone()));
        spec
    }
}

/// A bundle directory on disk; removed by [`Bundle::remove`], or on drop as a last resort.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    removed: bool,
}

impl Bundle {
    /// Creates `dir` (mode 0700; its parent must exist, `dir` must not) and writes `spec` to
    /// `dir/config.json` (mode 0600). `root.path` must be absolute.
    pub fn create(dir: impl Into<PathBuf>, spec: &Spec) -> Result<Bundle, BundleError> {
        let dir: PathBuf = dir.into();
        let invalid = |message: &str| BundleError::Invalid { path: dir.clone(), message: message.to_string() };
        if !dir.is_absolute() {
            return Err(invalid("the bundle directory must be absolute (hooks get it in their state)"));
        }
        let root = spec.root().as_ref().ok_or_else(|| invalid("config has no root"))?;
        if !root.path().is_absolute() {
            return Err(invalid("root.path must be absolute (hooks resolve a relative one against their own cwd)"));
        }
        if spec.process().is_none() {
            return Err(invalid("config has no process"));
        }
        let data = serde_json::to_vec_pretty(spec).map_err(|e| invalid(&format!("config does not serialise: {e}")))?;
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|source| BundleError::Io {
            op: "create bundle directory",
            path: dir.clone(),
            source,
        })?;
        let bundle = Bundle { dir, removed: false };
        let path = bundle.config_path();
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            f.write_all(&data)?;
            f.flush()
        };
        write().map_err(|source| BundleError::Io { op: "write", path: path.clone(), source })?;
        Ok(bundle)
    }

    /// The bundle directory (what a hook's state calls `bundle`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Removes the directory and everything in it; one already gone is fine.
    pub fn remove(mut self) -> Result<(), BundleError> {
        self.removed = true;
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BundleError::Io { op: "remove bundle", path: self.dir.clone(), source: e }),
            _ => Ok(()),
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if !self.removed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use oci_spec::runtime::Capability;

    use super::*;

    #[test]
    fn writes_what_the_nvidia_hook_reads_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = BundleConfig {
            root: PathBuf::from("/var/lib/fcsup/i/abc/rootfs"),
            args: vec!["/code/server".into()],
            env: vec!["NVIDIA_VISIBLE_DEVICES=0".into()],
            cwd: PathBuf::from("/code"),
            ..Default::default()
        };
        cfg.bounding.insert(Capability::Chown);
        let dir = tmp.path().join("bundle");
        let b = Bundle::create(&dir, &cfg.to_spec()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(b.config_path()).unwrap().permissions().mode() & 0o777, 0o600);
        let v: serde_json::Value = serde_json::from_slice(&fs::read(b.config_path()).unwrap()).unwrap();
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["root"]["path"], "/var/lib/fcsup/i/abc/rootfs");
        assert_eq!(v["process"]["env"], serde_json::json!(["NVIDIA_VISIBLE_DEVICES=0"]));
        assert_eq!(v["process"]["args"], serde_json::json!(["/code/server"]));
        assert_eq!(v["process"]["cwd"], "/code");
        assert_eq!(v["process"]["capabilities"]["bounding"], serde_json::json!(["CAP_CHOWN"]));
        assert_eq!(v["mounts"], serde_json::json!([]));
        assert!(v.get("hostname").is_none() && v.get("linux").is_none());
        b.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn refuses_relative_root_and_existing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = BundleConfig { root: PathBuf::from("rootfs"), ..Default::default() };
        let e = Bundle::create(tmp.path().join("b"), &cfg.to_spec()).unwrap_err();
        assert!(e.to_string().contains("root.path must be absolute"), "{e}");
        let cfg = BundleConfig { root: PathBuf::from("/r"), ..Default::default() };
        let e = Bundle::create(tmp.path(), &cfg.to_spec()).unwrap_err();
        assert!(e.to_string().contains("failed to create bundle directory"), "{e}");
        assert!(tmp.path().exists(), "a failed create must not remove what was there");
    }

    #[test]
    fn dropped_bundle_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("b");
        let cfg = BundleConfig { root: PathBuf::from("/r"), ..Default::default() };
        drop(Bundle::create(&dir, &cfg.to_spec()).unwrap());
        assert!(!dir.exists());
    }
}
