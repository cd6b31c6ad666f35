//! Write generated flow log records (see `flowlog_query::sample`) into a directory.
//!
//! ```text
//! cargo run -p flowlog-query --example gen_logs -- DIR [MINUTES] [MAX_STREAMS] [SEED]
//! ```
//!
//! The records are spread over `flows-0.json`, `flows-1.jsonl` and `flows-2.log`,
//! starting MINUTES minutes before now (default 60), at most MAX_STREAMS streams
//! per interface per window (default 12).

use std::path::PathBuf;

use flowlog_query::sample::{generate, write_jsonl, SampleSpec};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| {
        eprintln!("usage: gen_logs DIR [MINUTES] [MAX_STREAMS] [SEED]");
        std::process::exit(2)
    }));
    let num = |v: Option<String>, d: u64| v.and_then(|s| s.parse().ok()).unwrap_or(d);
    let minutes = num(args.next(), 60) as u32;
    let max_streams = num(args.next(), 12) as u32;
    let seed = num(args.next(), 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let records = generate(&SampleSpec {
        start: now - i64::from(minutes) * 60,
        minutes,
        max_streams,
        seed,
    });
    std::fs::create_dir_all(&dir)?;
    let names = ["flows-0.json", "flows-1.jsonl", "flows-2.log"];
    let per = records.len().div_ceil(names.len()).max(1);
    for (i, chunk) in records.chunks(per).enumerate() {
        write_jsonl(&dir.join(names[i]), chunk)?;
    }
    eprintln!("{} records in {}", records.len(), dir.display());
    Ok(())
}
