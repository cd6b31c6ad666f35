//! Shared set-up of the integration tests: generated logs in a fresh directory,
//! an engine over them, results as text.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use chrono_tz::Tz;
use flowlog_query::{
    output,
    sample::{generate, write_jsonl, SampleRecord, SampleSpec},
    Engine, EngineOptions, QueryResult, TimeRange,
};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "flowlog-query-{}-{}-{}",
            name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The generated records of the tests: 45 one-minute windows.
pub fn spec() -> SampleSpec {
    SampleSpec {
        start: 1_720_775_400,
        minutes: 45,
        max_streams: 10,
        seed: 7,
    }
}

/// Records written over three files (`.json`, `.jsonl`, `.log`) plus files the
/// engine must skip (`notes.txt`, not JSON) or read as nothing (`empty.json`).
pub struct Logs {
    pub dir: TempDir,
    pub records: Vec<SampleRecord>,
    /// Each record as the JSON object it was written as (field → text).
    pub raw: Vec<HashMap<String, String>>,
}

pub fn logs(name: &str) -> Logs {
    let dir = TempDir::new(name);
    let records = generate(&spec());
    let third = records.len() / 3;
    write_jsonl(&dir.path().join("a.json"), &records[..third]).unwrap();
    write_jsonl(&dir.path().join("b.jsonl"), &records[third..2 * third]).unwrap();
    write_jsonl(&dir.path().join("c.log"), &records[2 * third..]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not { json\n").unwrap();
    std::fs::write(dir.path().join("empty.json"), "").unwrap();
    let raw = records
        .iter()
        .map(|r| {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&r.to_json()).unwrap();
            v.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
                .collect()
        })
        .collect();
    Logs { dir, records, raw }
}

pub fn engine(logs: &Logs, tz: Tz) -> Engine {
    engine_range(logs, tz, TimeRange::ALL)
}

pub fn engine_range(logs: &Logs, tz: Tz, range: TimeRange) -> Engine {
    Engine::open(&EngineOptions {
        logs: vec![logs.dir.path().to_path_buf()],
        range,
        tz,
        threads: Some(2),
    })
    .unwrap()
}

/// Column names and rows as text.
pub fn table(r: &QueryResult) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    (
        r.schema.fields().iter().map(|f| f.name().clone()).collect(),
        output::rows(r).unwrap(),
    )
}

pub fn q(engine: &mut Engine, query: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    match engine.query(query) {
        Ok(r) => table(&r),
        Err(e) => panic!("query failed: {e}\n{query}"),
    }
}

/// A single number from a one-row, one-column result.
pub fn scalar(engine: &mut Engine, query: &str) -> Option<i64> {
    let (_, rows) = q(engine, query);
    assert_eq!(rows.len(), 1, "{query}");
    rows[0][0].as_ref().map(|v| v.parse().unwrap())
}

pub fn s<T: ToString>(v: T) -> Option<String> {
    Some(v.to_string())
}

pub fn os<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}
