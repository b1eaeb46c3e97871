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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let out = out.wait_with_output().unwrap();
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
    assert_no_cgroup_left(pid);
}

/// Nothing left behind: the cgroup root of the bench run `pid` is gone (other bench runs
/// may be running at the same time).
fn assert_no_cgroup_left(pid: u32) {
    let left = common::cgroup2_mount().join(format!("fcsup-bench-{pid}"));
    assert!(!left.exists(), "bench cgroups left: {}", left.display());
}

#[test]
fn bench_quick_cold_group_has_the_custom_container_rows() {
    if !common::privileged() {
        return;
    }
    let have = |tool: &str| std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have("umoci") {
        assert!(std::env::var("FCSUP_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "umoci is missing (apt-get install umoci)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fcsup"))
        .args(["bench", "--quick", "--no-peers", "--only", "cold", "--fixture", env!("CARGO_BIN_EXE_fcsup-fixture"), "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let out = out.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = report["results"].as_array().unwrap();
    let row = |system: &str, metric: &str, workload: &str| {
        rows.iter()
            .find(|r| r["system"] == system && r["metric"] == metric && r["workload"] == workload)
            .unwrap_or_else(|| panic!("no {system} {metric} / {workload} row in {rows:#?}"))
            .clone()
    };
    // The Python handler function (built-in runtime) beside `python3 -c 'import index'`.
    for system in ["fcsup", "plain"] {
        assert!(row(system, "cold_start", "python handler")["n"].as_u64().unwrap() > 0);
    }
    assert!(row("fcsup", "cold_start_added", "python handler")["n"].as_u64().unwrap() > 0);
    // The image's cold start, phase by phase, next to the custom runtime's, and the difference.
    for metric in ["cold_start", "cold_start.setup", "cold_start.exec", "cold_start.respond"] {
        let r = row("fcsup", metric, "image");
        assert_eq!((r["unit"].as_str(), r["n"].as_u64()), (Some("us"), row("fcsup", metric, "native")["n"].as_u64()), "{r}");
    }
    assert!(row("fcsup", "cold_start", "image")["min"].as_f64().unwrap() > 0.0);
    row("fcsup", "cold_start_image_added", "image");
    if have("skopeo") && std::path::Path::new("/usr/bin/docker-registry").exists() {
        let r = row("fcsup", "first_pull_throughput", "native image");
        assert!(r["unit"] == "MB/s" && r["min"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_no_cgroup_left(pid);
}
