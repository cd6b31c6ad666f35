//! Scan rate of the query engine: rows (records) per second over a large
//! generated log set.
//!
//! ```text
//! cargo bench -p flowlog-query --bench scan
//! FLOWLOG_BENCH_ROWS=4000000 cargo bench -p flowlog-query --bench scan
//! ```
//!
//! The records (default about 1,000,000, ~390 bytes each) are written once into
//! four JSON-lines files in a temporary directory; every query reads them all
//! from the page cache. Criterion reports the throughput in elements (records)
//! per second.

use std::time::Duration;

use chrono_tz::Tz;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowlog_query::{
    sample::{generate, write_jsonl, SampleSpec},
    Engine, EngineOptions, TimeRange,
};

const QUERIES: [(&str, &str); 4] = [
    ("count", "* | select count(*)"),
    (
        "example_1_group_by",
        r#"* | select "eni-id",srcaddr,dstaddr,direction,sum(bytes) as byte from log GROUP BY "eni-id",srcaddr,dstaddr,direction ORDER BY "eni-id" DESC limit 10"#,
    ),
    (
        "example_2_search",
        "dstaddr:10.0.0.1 AND dstport:80 | SELECT srcaddr, SUM(CASE WHEN action = 'ACCEPT' THEN 1 ELSE 0 END) AS accept_count, SUM(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS reject_count FROM log GROUP BY srcaddr ORDER BY accept_count + reject_count DESC",
    ),
    (
        "example_3_time_buckets",
        "direction: 'in' and srcaddr: 10.0.0.* | select date_format(from_unixtime(__time__ - __time__% 60), '%H:%i:%S') as time, concat(srcaddr,'->', dstaddr), sum(bytes*8/60) as bandwidth group by time,srcaddr,dstaddr order by time asc limit 100",
    ),
];

fn scan(c: &mut Criterion) {
    let want: usize = std::env::var("FLOWLOG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // About 3 interfaces × 100 streams per one-minute window.
    let minutes = (want / 300).max(1) as u32;
    let records = generate(&SampleSpec {
        start: 1_720_000_000,
        minutes,
        max_streams: 200,
        seed: 42,
    });
    let dir = std::env::temp_dir().join(format!("flowlog-query-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let per = records.len().div_ceil(4);
    let mut bytes = 0u64;
    for (i, chunk) in records.chunks(per).enumerate() {
        let path = dir.join(format!("flows-{i}.log"));
        write_jsonl(&path, chunk).expect("write logs");
        bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    let rows = records.len() as u64;
    drop(records);
    eprintln!(
        "scan bench: {rows} records, {:.0} MB in {}",
        bytes as f64 / 1e6,
        dir.display()
    );

    let mut engine = Engine::open(&EngineOptions {
        logs: vec![dir.clone()],
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: None,
    })
    .expect("engine");
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, query) in QUERIES {
        group.bench_function(name, |b| {
            b.iter(|| engine.query(query).expect("query"));
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, scan);
criterion_main!(benches);
