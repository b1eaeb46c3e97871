//! Privileged tests of the one-machine cluster (issue 17): three fcsup nodes, each in its own
//! network namespace and cgroup root, behind HAProxy, with etcd; and that the cluster leaves
//! nothing behind, also when it fails to start.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::{fixture_fn, invoke, leftovers, start, teardown_clean, Cluster, Spec};

#[test]
fn cluster_serves_through_haproxy_and_leaves_nothing() {
    let Some(c) = start(3, |code| fixture_fn("hello", code, ""), |_| {}) else { return };
    let r = invoke(&c.front, "hello", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    for n in &c.nodes {
        let r = invoke(&n.addr, "hello", "");
        assert_eq!(r.status, 200, "{}: {}", n.name, r.text());
    }
    teardown_clean(c);
}

#[test]
fn a_cluster_that_fails_to_start_leaves_nothing() {
    if !common::privileged() {
        return;
    }
    // An "fcsup" that exits at once: the first node never answers.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fcsup");
    std::fs::write(&fake, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = dir.path().join("s.yaml");
    std::fs::write(&yaml, "edition: 3.0.0\nresources: {}\n").unwrap();
    let err = format!("{:#}", Cluster::start(Spec::new(2, &fake, &yaml)).expect_err("a cluster of nodes that exit cannot start"));
    assert!(err.contains("exited"), "{err}");
    let run: u8 = err.split("cluster run ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{err}"));
    let left = leftovers(run);
    assert!(left.is_empty(), "a failed start left behind: {left:?}");
}
