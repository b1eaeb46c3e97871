//! Privileged tests of the bill of several nodes (issue 17): each node's ledger stays its own
//! and names the node; `fcsup report` merges ledger files and nodes' front doors into one bill,
//! billing a record held by two sources once, and splits it by node; `/metrics` names the node.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A node named `name` serving the fixture as function `f`, with extra `args`.
fn node(name: &str, args: &[&str]) -> Fcsup {
    let yaml = format!("edition: 3.0.0\nresources:\n{}", fixture_props("f", ""));
    let mut all = vec!["--node-name", name];
    all.extend_from_slice(args);
    Fcsup::serve_file(&yaml, &all)
}

fn ledger_path(f: &Fcsup) -> PathBuf {
    f.dir.path().join("ledger.jsonl")
}

/// Invokes `f` `n` times and waits until the ledger holds their windows.
fn invoke_and_wait(node: &Fcsup, n: usize) {
    for _ in 0..n {
        assert_eq!(node.invoke("f", "{}").status, 200);
    }
    wait_for("the windows in the ledger", Duration::from_secs(10), || {
        let text = http(&node.addr, "GET", "/admin/ledger", &[], b"").text();
        let billed: u64 = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["invocations"].as_u64().unwrap()).sum();
        (billed == n as u64).then_some(())
    });
}

/// `fcsup report ARGS`: (exit success, stdout, stderr).
fn report(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fcsup")).arg("report").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `fcsup report ARGS --json`, which must succeed: the bills.
fn bills(args: &[&str]) -> (Vec<Value>, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = report(&all);
    assert!(ok, "fcsup report {all:?} failed: {err}");
    (serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}")).as_array().unwrap().clone(), err)
}

/// The bill of function `f` (on `node`, when split): (invocations, billed ms, CU).
fn of(bills: &[Value], node: Option<&str>) -> (u64, u64, f64) {
    let b = bills
        .iter()
        .find(|b| b["function"] == "f" && node.is_none_or(|n| b["node"] == n))
        .unwrap_or_else(|| panic!("no bill of f on {node:?} in {bills:#?}"));
    (b["invocations"].as_u64().unwrap(), b["billed_ms"].as_u64().unwrap(), b["cu"]["total"].as_f64().unwrap())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_nodes_ledgers_merge_into_one_bill_and_a_ledger_given_twice_is_billed_once() {
    if !privileged() {
        return;
    }
    let mut a = node("node-a", &[]);
    let mut b = node("node-b", &[]);
    invoke_and_wait(&a, 2);
    invoke_and_wait(&b, 1);
    a.stop_and_check_clean();
    b.stop_and_check_clean();
    let (la, lb) = (ledger_path(&a), ledger_path(&b));
    // Each record names its node and has an id of its own.
    for (path, name) in [(&la, "node-a"), (&lb, "node-b")] {
        let recs: Vec<Value> = std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(recs.len() >= 2, "the start window and the requests': {recs:#?}");
        assert!(recs.iter().all(|r| r["node"] == name && r["id"].as_str().is_some_and(|i| i.len() == 32)), "{recs:#?}");
    }

    let one_a = of(&bills(&["--ledger", s(&la)]).0, None);
    let one_b = of(&bills(&["--ledger", s(&lb)]).0, None);
    assert_eq!((one_a.0, one_b.0), (2, 1));
    let (merged, note) = bills(&["--ledger", s(&la), "--ledger", s(&lb)]);
    let both = of(&merged, None);
    assert_eq!((both.0, both.1), (3, one_a.1 + one_b.1), "{merged:#?}");
    assert!((both.2 - (one_a.2 + one_b.2)).abs() < 1e-9, "{merged:#?}");
    assert!(merged.iter().all(|b| b.get("node").is_none()), "no node column unless asked: {merged:#?}");
    assert!(note.contains("from 2 source(s); 0 held by more than one"), "{note}");

    let (split, _) = bills(&["--ledger", s(&la), "--ledger", s(&lb), "--by-node"]);
    assert_eq!(of(&split, Some("node-a")), one_a, "{split:#?}");
    assert_eq!(of(&split, Some("node-b")), one_b, "{split:#?}");
    assert_eq!(split.len(), 2, "{split:#?}");

    // The same ledger twice, and under another name (a copy): billed once.
    let copy = a.dir.path().join("copy.jsonl");
    std::fs::copy(&la, &copy).unwrap();
    let (twice, note) = bills(&["--ledger", s(&la), "--ledger", s(&copy), "--ledger", s(&la)]);
    assert_eq!(of(&twice, None), one_a, "{twice:#?}");
    let n = std::fs::read_to_string(&la).unwrap().lines().count();
    assert!(note.contains(&format!("merged {n} record(s) from 3 source(s); {} held by more than one", 2 * n)), "{note}");

    // The table says the same, with a NODE column when split.
    let (ok, table, err) = report(&["--ledger", s(&la), "--ledger", s(&lb), "--by-node"]);
    assert!(ok, "{err}");
    assert!(
        table.starts_with("NODE ") && table.lines().any(|l| l.starts_with("node-a ")) && table.lines().any(|l| l.starts_with("node-b ")),
        "{table}"
    );
}

#[test]
fn report_asks_nodes_at_their_front_door_with_the_admin_token() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "node-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut n = node("node-t", &["--admin-token-file", s(&token)]);
    invoke_and_wait(&n, 2);

    // Every series of /metrics names the node.
    let metrics = http(&n.addr, "GET", "/metrics", &[], b"").text();
    let series: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert!(series.iter().any(|l| l.starts_with("fcsup_invocations_total{")), "{metrics}");
    assert!(series.iter().all(|l| l.contains(r#"node="node-t""#)), "{metrics}");

    let url = format!("http://{}", n.addr);
    let (split, _) = bills(&["--node", &url, "--admin-token-file", s(&token), "--by-node"]);
    assert_eq!(of(&split, Some("node-t")).0, 2, "{split:#?}");
    // The node asked twice, and the node and its own ledger file: each record once.
    let (twice, note) = bills(&["--node", &url, "--node", &n.addr, "--admin-token-file", s(&token)]);
    assert_eq!(of(&twice, None).0, 2, "{twice:#?}");
    assert!(note.contains("from 2 source(s)"), "{note}");
    let (mixed, _) = bills(&["--node", &url, "--ledger", s(&ledger_path(&n)), "--admin-token-file", s(&token)]);
    assert_eq!(of(&mixed, None).0, 2, "{mixed:#?}");

    // Without the right token the report fails rather than bill short.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let (ok, _, err) = report(&["--node", &url, "--admin-token-file", s(&wrong), "--json"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = report(&["--node", &url, "--json"]);
    assert!(!ok && err.contains("--admin-token-file"), "{err}");
    n.stop_and_check_clean();
}
