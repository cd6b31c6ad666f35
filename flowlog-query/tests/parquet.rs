//! Parquet files as the agent's `parquet` sink writes them (integers typed, `-` in
//! an integer column NULL, text as written) in a `dt=/hour=` tree: every query gives
//! the same answer as over the JSON files of the same records, alone or mixed.

mod common;

use chrono_tz::Tz;
use common::*;
use datafusion::{
    arrow::datatypes::{DataType, Field, Schema},
    prelude::{JsonReadOptions, SessionContext},
};
use flowlog_query::{
    sample::write_jsonl,
    schema::{FieldKind, FIELDS},
    Engine, EngineOptions, TimeRange,
};

/// Integer columns the agent writes as INT32 (the others INT64).
const INT32: [&str; 6] = [
    "version",
    "protocol",
    "srcport",
    "dstport",
    "tcp-flags",
    "traffic_path",
];

/// Writes `records` as one Parquet file at `path`, typed like the agent's sink.
fn write_parquet(json: &std::path::Path, path: &std::path::Path) {
    let schema = Schema::new(
        FIELDS
            .iter()
            .map(|f| Field::new(f.name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let cols: Vec<String> = FIELDS
        .iter()
        .map(|f| {
            let q = format!("\"{}\"", f.name);
            match f.kind {
                FieldKind::Number if INT32.contains(&f.name) => {
                    format!("TRY_CAST({q} AS INT) AS {q}")
                }
                FieldKind::Number => format!("TRY_CAST({q} AS BIGINT) AS {q}"),
                _ => q,
            }
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_json(
            "raw",
            json.to_str().unwrap(),
            JsonReadOptions::default()
                .schema(&schema)
                .file_extension(".json"),
        )
        .await
        .unwrap();
        let sql = format!(
            "COPY (SELECT {} FROM raw) TO '{}' STORED AS PARQUET",
            cols.join(", "),
            path.display()
        );
        ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    });
}

fn open(paths: Vec<std::path::PathBuf>) -> Engine {
    Engine::open(&EngineOptions {
        logs: paths,
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: Some(2),
    })
    .unwrap()
}

#[test]
fn parquet_trees_answer_as_the_json_files() {
    let logs = logs("pq-json");
    let half = logs.records.len() / 2;
    let src = TempDir::new("pq-src");
    write_jsonl(&src.path().join("first.json"), &logs.records[..half]).unwrap();
    write_jsonl(&src.path().join("second.json"), &logs.records[half..]).unwrap();
    let tree = TempDir::new("pq-tree");
    let part = tree.path().join("dt=2024-07-12/hour=09");
    std::fs::create_dir_all(&part).unwrap();
    write_parquet(
        &src.path().join("first.json"),
        &part.join("flows-20240712T091000Z.parquet"),
    );
    let part2 = tree.path().join("dt=2024-07-12/hour=10");
    std::fs::create_dir_all(&part2).unwrap();
    write_parquet(
        &src.path().join("second.json"),
        &part2.join("flows-20240712T100000Z.parquet"),
    );
    // A file being written (hidden) is not read.
    std::fs::write(part2.join(".flows-20240712T101000Z.parquet.part"), b"PAR1").unwrap();

    let mut json = open(vec![logs.dir.path().to_path_buf()]);
    let mut parquet = open(vec![tree.path().to_path_buf()]);
    // Mixed: the first half as JSON, the second as Parquet.
    let mixed_dir = TempDir::new("pq-mixed");
    write_jsonl(&mixed_dir.path().join("first.json"), &logs.records[..half]).unwrap();
    std::fs::copy(
        part2.join("flows-20240712T100000Z.parquet"),
        mixed_dir.path().join("second.parquet"),
    )
    .unwrap();
    let mut mixed = open(vec![mixed_dir.path().to_path_buf()]);
    assert_eq!(parquet.files().len(), 2, "{:?}", parquet.files());

    for query in [
        "* | SELECT count(*) AS n, sum(packets) AS p, sum(bytes) AS b, count(srcaddr) AS s, count(\"skipped-streams\") AS k FROM log",
        r#"* | select "eni-id",srcaddr,dstaddr,direction,sum(bytes) as byte from log GROUP BY "eni-id",srcaddr,dstaddr,direction ORDER BY "eni-id" DESC, srcaddr, dstaddr, direction limit 10"#,
        "dstaddr:10.0.0.1 AND dstport:80 | SELECT srcaddr, count(*) AS n FROM log GROUP BY srcaddr ORDER BY srcaddr",
        "srcport: - | SELECT \"log-status\", count(*) AS n FROM log GROUP BY 1 ORDER BY 1",
        "dstport: 8* and bytes > 1000 | SELECT count(*) AS n, max(bytes) AS m FROM log",
        "* | SELECT \"log-status\", \"account-id\", \"vpc-id\", \"type\", action, count(*) AS n, sum(\"skipped-packets\") AS sp FROM log GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
        "* | SELECT __time__ - __time__ % 600 AS t, sum(packets) AS p, bit_or(\"tcp-flags\") AS f FROM log GROUP BY t ORDER BY t",
        "* | SELECT protocol, srcport, dstport, traffic_path, version FROM log ORDER BY __time__, srcaddr, dstaddr, srcport, dstport, protocol, direction, \"eni-id\", packets LIMIT 50",
    ] {
        let want = q(&mut json, query);
        assert!(!want.1.is_empty(), "{query}: no rows");
        assert_eq!(q(&mut parquet, query), want, "parquet: {query}");
        assert_eq!(q(&mut mixed, query), want, "mixed: {query}");
    }
    assert_eq!(
        scalar(&mut parquet, "* | SELECT count(*) FROM log"),
        Some(logs.records.len() as i64)
    );
}
