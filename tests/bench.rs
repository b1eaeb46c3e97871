//! `fcsup bench` keeps working (issue 6): a quick run of its freeze/thaw group produces the
//! JSON shape the issue names and the correctness column. No timing is asserted: benchmarks
//! are not tests.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

#[test]
fn bench_quick_freeze_group_reports_rows_and_correctness() {
    if !common::privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["bench", "--quick", "--no-peers", "--only", "freeze", "--fixture", env!("CARGO_BIN_EXE_fcsup-fixture"), "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["host"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    let rows = report["results"].as_array().unwrap();
    for (metric, workload) in [("freeze", "1 busy thread"), ("thaw", "50 busy threads"), ("thaw_seen", "1 busy thread")] {
        let row = rows
            .iter()
            .find(|r| r["system"] == "fcsup" && r["metric"] == metric && r["workload"] == workload)
            .unwrap_or_else(|| panic!("no fcsup {metric} / {workload} row in {rows:#?}"));
        assert_eq!(row["unit"], "us");
        assert!(row["n"].as_u64().unwrap() > 0);
        let (min, p50, p99, max) =
            (row["min"].as_f64().unwrap(), row["p50"].as_f64().unwrap(), row["p99"].as_f64().unwrap(), row["max"].as_f64().unwrap());
        assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= max, "{row}");
    }
    let fcsup = report["correctness"].as_array().unwrap().iter().find(|c| c["system"] == "fcsup").unwrap();
    assert_eq!(fcsup["child_keeps_running_while_frozen"], false, "a frozen instance's child process must not run");
    // Nothing left behind: the bench's cgroup root is gone.
    let left: Vec<_> = std::fs::read_dir(common::cgroup2_mount())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fcsup-bench"))
        .collect();
    assert!(left.is_empty(), "bench cgroups left: {left:?}");
}
