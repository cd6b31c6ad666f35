//! The `flowlog-query` binary (what `flowlog query` / `flowlog report` run): flags,
//! output on stdout, errors on stderr with exit code 2.
mod common;

use std::process::Command;

use common::logs;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-query");

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn query_prints_the_result_as_json_lines() {
    let logs = logs("cli-query");
    let dir = logs.dir.path().to_str().unwrap();
    let ok: Vec<_> = logs
        .records
        .iter()
        .filter(|r| r.log_status == "OK")
        .collect();
    let packets: u64 = ok.iter().filter_map(|r| r.packets).sum();
    let (code, out, err) = run(&[
        "query",
        "--logs",
        dir,
        "--format",
        "json",
        "log-status: OK | select count(*) as n, sum(packets) as p",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{{\"n\":{},\"p\":{packets}}}\n", ok.len()));
}

#[test]
fn bad_query_exits_2_with_nothing_on_stdout() {
    let logs = logs("cli-bad");
    let dir = logs.dir.path().to_str().unwrap();
    let (code, out, err) = run(&["query", "--logs", dir, "* | selec count(*)"]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("flowlog: error: "), "{err}");
    // Flags clap rejects: also 2.
    let (code, _, _) = run(&["query", "* | select 1"]);
    assert_eq!(code, Some(2));
}

#[test]
fn report_writes_the_page() {
    let logs = logs("cli-report");
    let dir = logs.dir.path().to_str().unwrap();
    let page = logs.dir.path().join("out.html");
    let (code, out, err) = run(&["report", "--logs", dir, "--out", page.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("== Overview =="), "{out}");
    assert!(out.ends_with(&format!("Report written to {}\n", page.display())));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
}
