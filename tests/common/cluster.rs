//! The one-machine cluster of the cluster tests: xtask's [`Cluster`] (the one `cargo xtask
//! cluster` runs: network namespaces, etcd, nodes, HAProxy) on this build's fcsup, serving
//! functions on the native fixture (`sleep:MS` bodies hold an instance busy).
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

pub use xtask::cluster::load::{Load, Sample};
pub use xtask::cluster::{leftovers, Cluster, Spec};

use crate::common::{http_tcp, http_unix, privileged, Resp};

/// A cluster and the files it serves.
pub struct TestCluster {
    pub c: Cluster,
    pub code: PathBuf,
    _files: tempfile::TempDir,
}

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.c
    }
}

/// A function block on the native fixture in `code`, with `extra` props lines.
pub fn fixture_fn(name: &str, code: &Path, extra: &str) -> String {
    let mut s = format!(
        "  {name}:\n    props:\n      code: {}\n      memorySize: 512\n      cpu: 0.25\n      timeout: 60\n      customRuntimeConfig: {{command: [/code/fcsup-fixture]}}\n",
        code.display()
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s += &format!("      {l}\n");
    }
    s
}

/// Starts `nodes` nodes serving the `resources:` that `resources` writes for the fixture's
/// code directory, with fast health checks; `tweak` adjusts the rest. `None`: skipped (see
/// [`privileged`]).
pub fn start(nodes: usize, resources: impl Fn(&Path) -> String, tweak: impl FnOnce(&mut Spec)) -> Option<TestCluster> {
    if !privileged() {
        return None;
    }
    let files = tempfile::tempdir().unwrap();
    let code = files.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_fcsup-fixture"), code.join("fcsup-fixture")).unwrap();
    let yaml = files.path().join("s.yaml");
    std::fs::write(&yaml, format!("edition: 3.0.0\nresources:\n{}", resources(&code))).unwrap();
    let mut spec = Spec::new(nodes, Path::new(env!("CARGO_BIN_EXE_fcsup")), &yaml);
    spec.check_ms = 100;
    tweak(&mut spec);
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("{e:#}"));
    Some(TestCluster { c, code, _files: files })
}

/// Invokes `name` at `addr` (HAProxy or one node) with `body`.
pub fn invoke(addr: &str, name: &str, body: &str) -> Resp {
    http_tcp(addr, "POST", &format!("/2023-03-30/functions/{name}/invocations"), &[], body.as_bytes())
}

/// The invoke path of `name`.
pub fn path(name: &str) -> String {
    format!("/2023-03-30/functions/{name}/invocations")
}

/// Tears the cluster down and asserts that nothing of it is left.
pub fn teardown_clean(mut c: TestCluster) {
    let run = c.run();
    c.teardown().unwrap_or_else(|e| panic!("{e:#}"));
    let left = leftovers(run);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Requests of `function` in flight on node `node` (its `/admin/instances`).
pub fn in_flight(node: &xtask::cluster::Node, function: &str) -> usize {
    let r = http_unix(&node.admin_socket, "GET", "/admin/instances", &[], b"");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    list.iter().filter(|i| i["function"] == function).filter_map(|i| i["in_flight"].as_u64()).map(|n| usize::try_from(n).unwrap()).sum()
}
