//! The benchmark suite runs end to end at a small scale against this build: every benchmark
//! produces its figures, DuckDB's answers agree with Tributary's (the suite exits otherwise),
//! and the JSON report holds what the table shows. Speed is not asserted: the figures of a
//! debug build on a shared machine say nothing.

use std::process::Command;

use tributary_testkit::{python, repo_root};

#[test]
fn benchmark_suite_runs_end_to_end_at_a_small_scale() {
    let python = python(&["duckdb", "psycopg", "boto3"]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("results.json");
    let output = Command::new(python)
        .arg(repo_root().join("bench/suite.py"))
        .args(["all", "--scale", "0.01", "--runs", "1"])
        .args(["--rate", "2000", "--cdc-rate", "5000"])
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_tributary"))
        .arg("--json")
        .arg(&report)
        .output()
        .expect("run bench/suite.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench/suite.py failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("the JSON report")).unwrap();
    let figures = report["figures"].as_array().expect("figures");
    let benchmarks: std::collections::BTreeSet<&str> = figures
        .iter()
        .map(|f| f["benchmark"].as_str().unwrap())
        .collect();
    assert_eq!(
        benchmarks.into_iter().collect::<Vec<_>>(),
        [
            "analytics",
            "cdc-apply",
            "cdc-sql",
            "cdc-stream",
            "freshness-embedded",
            "freshness-kinesalite",
            "stateless-view",
            "statements",
            "super"
        ]
    );
    for figure in figures {
        let value = figure["value"].as_f64();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "a measured, positive figure: {figure}"
        );
        // Every figure is in the printed table, and peers are beside the figures they compare.
        assert!(
            stdout.contains(figure["name"].as_str().unwrap()),
            "{figure} in:\n{stdout}"
        );
        if let Some(peer) = figure["duckdb"].as_f64() {
            assert!(peer > 0.0, "{figure}");
            assert!(figure["ratio"].as_f64().is_some(), "{figure}");
        }
    }
    let with_peer = |benchmark: &str, name: &str| {
        figures
            .iter()
            .find(|f| f["benchmark"] == benchmark && f["name"] == name)
            .and_then(|f| f["duckdb"].as_f64())
            .is_some()
    };
    assert!(with_peer("super", "JSON_PARSE into a table"));
    assert!(with_peer("cdc-apply", "apply changes"));
    assert!(with_peer("analytics", "q1"));
    assert!(with_peer("statements", "INSERT, 322 parameters"));
}
