//! Every `.slt` file, in-process and over the Postgres protocol.

use tributary_testkit::{run_slt_in_process, run_slt_over_wire, slt_files};

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} sqllogictest file(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_in_process() {
    let files = slt_files();
    assert!(
        files.len() >= 5 || std::env::var("TRIBUTARY_SLT").is_ok(),
        "expected the slt/ suite, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for file in files {
        if let Err(err) = run_slt_in_process(&file).await {
            failures.push(format!("{}: {err}", file.display()));
        }
    }
    report(failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_over_wire() {
    let mut failures = Vec::new();
    for file in slt_files() {
        if let Err(err) = run_slt_over_wire(&file).await {
            failures.push(format!("{}: {err}", file.display()));
        }
    }
    report(failures);
}
