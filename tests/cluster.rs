//! Privileged tests of the one-machine cluster (issue 17): three fcsup nodes, each in its own
//! network namespace and cgroup root, behind HAProxy, with etcd; and that the cluster leaves
//! nothing behind, also when it fails to start.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use cluster::{fixture_fn, in_flight, invoke, leftovers, path, start, teardown_clean, Cluster, Load, Sample, Spec};
use common::wait_for;

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
    // Whoever writes etcd chooses the nodes' code: another local user cannot connect to it.
    let (host, port) = c.etcd.trim_start_matches("http://").split_once(':').unwrap();
    let connect = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new("/usr/bin/python3");
        cmd.args(["-c", &format!("import socket; socket.create_connection(('{host}', {port}), 5)")]).stderr(std::process::Stdio::null());
        if let Some(u) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, u);
            std::os::unix::process::CommandExt::gid(&mut cmd, u);
        }
        cmd.status().unwrap().success()
    };
    assert!(connect(None), "root reaches the cluster's etcd");
    assert!(!connect(Some(65534)), "another user reaches the cluster's etcd");
    teardown_clean(c);
}

#[test]
fn a_cluster_that_fails_to_start_leaves_nothing() {
    if !common::privileged() {
        return;
    }
    // An "fcsup" whose `functions push` works but whose nodes exit at once: the cluster is
    // half made (namespaces, etcd) when the first node fails.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fcsup");
    std::fs::write(&fake, "#!/bin/sh\n[ \"$1\" = functions ] && exit 0\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = dir.path().join("s.yaml");
    std::fs::write(&yaml, "edition: 3.0.0\nresources: {}\n").unwrap();
    let err = format!("{:#}", Cluster::start(Spec::new(2, &fake, &yaml)).expect_err("a cluster of nodes that exit cannot start"));
    assert!(err.contains("exited"), "{err}");
    let run: u8 = err.split("cluster run ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{err}"));
    let left = leftovers(run);
    assert!(left.is_empty(), "a failed start left behind: {left:?}");
}

/// The node name on an answer.
fn node_of(r: &common::Resp) -> String {
    r.header("x-fcsup-node").to_string()
}

#[test]
fn a_functions_requests_stay_on_its_home_node_until_it_is_full_then_spill() {
    // No bounded load: with HAProxy's (hash-balance-factor) a node takes at most its share of
    // all in-flight requests, so a function spills before its home is full, and now and then
    // even one request at a time moves (the last one's end not yet counted).
    let Some(c) = start(3, |code| fixture_fn("spill", code, "instanceConcurrency: 1\nfcsup: {maxInstances: 1}"), |s| s.balance_factor = Some(0))
    else {
        return;
    };
    let nodes: Vec<String> = (0..10)
        .map(|_| {
            let r = invoke(&c.front, "spill", "");
            assert_eq!(r.status, 200, "{}", r.text());
            node_of(&r)
        })
        .collect();
    let home = nodes[0].clone();
    assert!(c.nodes.iter().any(|n| n.name == home), "answers name their node: {nodes:?}");
    assert!(nodes.iter().all(|n| *n == home), "one at a time, every request lands on the home node: {nodes:?}");
    // The home node's one instance held busy: the node is full for the function.
    let front = c.front.clone();
    let busy = std::thread::spawn(move || invoke(&front, "spill", "sleep:5000"));
    let h = c.nodes.iter().find(|n| n.name == home).unwrap();
    wait_for("the held request on the home node", Duration::from_secs(20), || (in_flight(h, "spill") == 1).then_some(()));
    let direct = invoke(&h.addr, "spill", "");
    assert_eq!(direct.status, 429, "the home node is full: {}", direct.text());
    let r = invoke(&c.front, "spill", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(node_of(&r), home, "a request the full home node cannot take spills to another node");
    let b = busy.join().unwrap();
    assert_eq!((b.status, node_of(&b)), (200, home));
    teardown_clean(c);
}

#[test]
fn a_function_put_on_one_nodes_admin_api_is_served_by_all() {
    let Some(c) = start(3, |code| fixture_fn("first", code, ""), |_| {}) else { return };
    assert_eq!(invoke(&c.nodes[0].addr, "added", "").status, 404);
    let props = serde_json::json!({
        "code": c.code, "memorySize": 512, "cpu": 0.25, "timeout": 60,
        "customRuntimeConfig": {"command": ["/code/fcsup-fixture"]},
    });
    let r = common::http_unix(
        &c.nodes[1].admin_socket,
        "PUT",
        "/admin/functions/added",
        &[("Content-Type", "application/json")],
        props.to_string().as_bytes(),
    );
    assert!(r.status / 100 == 2, "PUT on node1: {} {}", r.status, r.text());
    for n in &c.nodes {
        wait_for(&format!("{} to serve the function", n.name), Duration::from_secs(20), || {
            (invoke(&n.addr, "added", "").status == 200).then_some(())
        });
    }
    let r = invoke(&c.front, "added", "");
    assert_eq!(r.status, 200, "through HAProxy: {}", r.text());
    teardown_clean(c);
}

#[test]
fn killing_a_node_moves_only_its_functions_and_fails_no_request_after_it_is_marked_down() {
    let names: Vec<String> = (0..9).map(|i| format!("f{i}")).collect();
    // No bounded load: each function stays on its home node, so "moved" is exact.
    let Some(mut c) = start(3, |code| names.iter().map(|n| fixture_fn(n, code, "")).collect(), |s| s.balance_factor = Some(0)) else { return };
    let home: HashMap<String, String> = names
        .iter()
        .map(|n| {
            let r = invoke(&c.front, n, "");
            assert_eq!(r.status, 200, "{}", r.text());
            (n.clone(), node_of(&r))
        })
        .collect();
    let victim_name = home["f0"].clone();
    let victim = c.nodes.iter().position(|n| n.name == victim_name).unwrap();
    assert!(home.values().any(|h| *h != victim_name), "every function hashed to {victim_name}: {home:?}");
    let paths: Vec<String> = names.iter().map(|n| path(n)).collect();
    let load = Load::start(&c.front, &paths, b"", names.len(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(1));
    let killed = load.t0.elapsed();
    c.kill_node(victim).unwrap();
    let down = c.wait_server(&victim_name, "DOWN", Duration::from_secs(20)).unwrap().duration_since(load.t0);
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.finish();
    let function = |s: &Sample| names[s.client % names.len()].clone();
    let failed_before = samples.iter().filter(|s| !s.ok() && s.start <= down).count();
    let failed_after: Vec<&Sample> = samples.iter().filter(|s| !s.ok() && s.start > down).collect();
    eprintln!(
        "{} requests; {victim_name} killed at {killed:?}, marked down at {down:?}; failed: {failed_before} sent before it was marked down, {} after",
        samples.len(),
        failed_after.len()
    );
    assert!(failed_after.is_empty(), "requests sent after HAProxy marked {victim_name} down failed: {failed_after:?}");
    // (One in flight on the killed node when it died fails: HAProxy does not run it twice.)
    for s in samples.iter().filter(|s| s.end < killed) {
        assert_eq!(s.node, home[&function(s)], "before the kill, {} was served off its home node", function(s));
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start > down).collect();
    for f in &names {
        assert!(after.iter().any(|s| function(s) == *f), "{f} got no request after the kill");
    }
    for s in after {
        let f = function(s);
        if home[&f] == victim_name {
            assert_ne!(s.node, victim_name, "{f} still answered by the killed node");
        } else {
            assert_eq!(s.node, home[&f], "{f} moved though its home node {} lives", home[&f]);
        }
    }
    teardown_clean(c);
}

#[test]
fn a_rolling_restart_of_every_node_under_steady_load_loses_no_request() {
    let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    // Draining outlasts HAProxy's two failed checks (100 ms apart) and a second.
    let Some(mut c) = start(3, |code| names.iter().map(|n| fixture_fn(n, code, "")).collect(), |s| s.drain_seconds = 2) else { return };
    for n in &names {
        assert_eq!(invoke(&c.front, n, "").status, 200);
    }
    let paths: Vec<String> = names.iter().map(|n| path(n)).collect();
    // Requests that take a while (some are in flight at each SIGTERM) and requests larger than
    // HAProxy's retry buffer (it cannot send those again elsewhere).
    let load = Load::start(&c.front, &paths, b"sleep:30", names.len(), Duration::from_millis(5));
    let big = Load::start(&c.front, &paths, &[b'x'; 64 << 10], names.len(), Duration::from_millis(5));
    for i in 0..c.nodes.len() {
        let name = c.nodes[i].name.clone();
        let status = c.stop_node(i).unwrap();
        assert!(status.success(), "{name} exited with {status}:\n{}", c.nodes[i].output());
        c.start_node(i).unwrap();
        c.wait_server(&name, "UP", Duration::from_secs(20)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = load.finish();
    let n = samples.len();
    samples.extend(big.finish());
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    eprintln!("{} requests during the rolling restart ({} of 64 KiB), {} failed", samples.len(), samples.len() - n, failed.len());
    assert!(failed.is_empty(), "a rolling restart lost requests: {failed:?}");
    teardown_clean(c);
}

#[test]
fn every_node_full_answers_429_in_fcs_shape() {
    let Some(c) = start(3, |code| fixture_fn("full", code, "instanceConcurrency: 1\nfcsup: {maxInstances: 1}"), |_| {}) else { return };
    let mut busy = Vec::new();
    for k in 1..=c.nodes.len() {
        let front = c.front.clone();
        busy.push(std::thread::spawn(move || invoke(&front, "full", "sleep:6000")));
        // One at a time, so each finds the nodes before it full (and none fails for a race).
        wait_for(&format!("{k} nodes busy"), Duration::from_secs(20), || {
            (c.nodes.iter().filter(|n| in_flight(n, "full") == 1).count() == k).then_some(())
        });
    }
    let r = invoke(&c.front, "full", "");
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["Code"], "ResourceExhausted", "{v}");
    assert!(v["Message"].as_str().is_some_and(|m| !m.is_empty()) && v["RequestId"].as_str().is_some(), "FC's error shape: {v}");
    let mut served: Vec<String> = busy
        .into_iter()
        .map(|b| b.join().unwrap())
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            node_of(&r)
        })
        .collect();
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 3, "the held requests filled every node: {served:?}");
    teardown_clean(c);
}
