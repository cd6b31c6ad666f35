//! Built-in reports mirroring the flow log dashboards. Each panel is a query in
//! the log service's `<search> | <SQL>` form, run through the same [`Engine`] as
//! `flowlog query`, plus a chart of its result.
//!
//! | section | panels |
//! |---|---|
//! | Overview | totals; accepted vs rejected bytes over time; inbound vs outbound bytes over time; totals per interface |
//! | Policy statistics | accepted / rejected streams by 5-tuple; rejected streams by destination |
//! | Interface traffic | in / out bytes per interface over time; capture windows per interface (OK, NODATA, SKIPDATA) |
//! | Host to host | top pairs by bytes; rate (bit/s) of the top 5 pairs per time bucket |
//! | CIDR to CIDR | bytes between the user's CIDR blocks (`--cidr NAME=CIDR`); sent and received per block |
//!
//! Time charts use one bucket for the whole report: the smallest of 1, 5, 10, 30
//! minutes, 1, 3, 6, 12 hours or a day that gives at most 180 points (so "rate
//! per minute" for up to three hours of logs). Rates are bits per second averaged
//! over the bucket (`sum(bytes) * 8 / bucket`, integer arithmetic as in the
//! log service). Streams are counted per record: one stream, one direction, one
//! interface, one window. CIDR blocks are tried in the order given; an address in
//! none of them is `other`.
//!
//! [`build`] runs everything, [`write_terminal`] prints the tables, and
//! [`html::render`] makes the self-contained page (inline SVG, no script, no
//! network access).

pub mod chart;
pub mod html;

use std::io::{self, Write};

use datafusion::arrow::{
    array::{Array, AsArray},
    compute::cast,
    datatypes::{DataType, Float64Type, Int64Type},
};

use crate::{
    engine::{Engine, QueryResult},
    error::QueryError,
    functions::Cidr,
    output,
    schema::quote_str,
};

/// A user-defined CIDR block: `--cidr NAME=CIDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedCidr {
    pub name: String,
    pub cidr: String,
}

impl NamedCidr {
    /// Parse `NAME=CIDR` (`vpc-a=10.0.0.0/16`).
    pub fn parse(flag: &str) -> Result<NamedCidr, QueryError> {
        let err = |reason: &str| QueryError::Cidr {
            value: flag.to_string(),
            reason: reason.to_string(),
        };
        let (name, cidr) = flag
            .split_once('=')
            .ok_or_else(|| err("expected NAME=CIDR, such as vpc-a=10.0.0.0/16"))?;
        let (name, cidr) = (name.trim(), cidr.trim());
        if name.is_empty() {
            return Err(err("the name is empty"));
        }
        Cidr::parse(cidr).map_err(|e| err(&e))?;
        Ok(NamedCidr {
            name: name.to_string(),
            cidr: cidr.to_string(),
        })
    }

    /// The blocks used when none are given: the private ranges.
    pub fn defaults() -> Vec<NamedCidr> {
        [
            ("10/8", "10.0.0.0/8"),
            ("172.16/12", "172.16.0.0/12"),
            ("192.168/16", "192.168.0.0/16"),
            ("fc00::/7", "fc00::/7"),
        ]
        .iter()
        .map(|(n, c)| NamedCidr {
            name: n.to_string(),
            cidr: c.to_string(),
        })
        .collect()
    }
}

/// Report settings.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// CIDR blocks for the CIDR-to-CIDR section (empty: [`NamedCidr::defaults`]).
    pub cidrs: Vec<NamedCidr>,
}

/// What a number means, for axis labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Bytes,
    BitsPerSecond,
    Count,
}

/// How a panel is drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chart {
    /// No chart, just the table.
    None,
    /// Time series: `x` a timestamp column (one row per bucket, or per bucket and
    /// `series` value), one line per `y` column (per `series` value).
    Lines {
        x: &'static str,
        series: Option<&'static str>,
        y: Vec<&'static str>,
        measure: Measure,
    },
    /// Horizontal bars, one per row, labelled by the `labels` columns; one
    /// segment (stacked) or bar (grouped) per `values` column.
    Bars {
        labels: Vec<&'static str>,
        values: Vec<&'static str>,
        stacked: bool,
        measure: Measure,
    },
    /// A matrix: `row` × `col` cells shaded by `value`.
    Matrix {
        row: &'static str,
        col: &'static str,
        value: &'static str,
        measure: Measure,
    },
}

/// One panel: a query and its chart.
#[derive(Clone, Debug)]
pub struct PanelSpec {
    pub id: &'static str,
    pub title: String,
    pub note: String,
    pub query: String,
    pub chart: Chart,
}

/// A section of panels.
#[derive(Clone, Debug)]
pub struct SectionSpec {
    pub id: &'static str,
    pub title: &'static str,
    pub panels: Vec<PanelSpec>,
}

/// The query of the report header (and of the bucket choice).
pub const TOTALS_QUERY: &str = "* | SELECT count(*) AS records,
       sum(CASE WHEN \"log-status\" = 'OK' THEN 1 ELSE 0 END) AS streams,
       sum(CASE WHEN \"log-status\" = 'NODATA' THEN 1 ELSE 0 END) AS nodata,
       sum(CASE WHEN \"log-status\" = 'SKIPDATA' THEN 1 ELSE 0 END) AS skipdata,
       COALESCE(sum(packets), 0) AS packets,
       COALESCE(sum(bytes), 0) AS bytes,
       count(DISTINCT \"eni-id\") AS interfaces,
       from_unixtime(min(__time__)) AS first_start,
       from_unixtime(max(__time__)) AS last_start
FROM log";

/// Bucket sizes tried for time charts, seconds.
pub const BUCKETS: [i64; 9] = [60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400];

/// The bucket for records spanning `first..=last` start times.
pub fn choose_bucket(first: i64, last: i64) -> i64 {
    let span = (last - first).max(0) + 60;
    BUCKETS
        .iter()
        .copied()
        .find(|b| span / b <= 180)
        .unwrap_or(86_400)
}

/// "1 minute", "5 minutes", "1 hour"...
pub fn bucket_name(b: i64) -> String {
    match b {
        b if b % 86_400 == 0 => plural(b / 86_400, "day"),
        b if b % 3600 == 0 => plural(b / 3600, "hour"),
        b if b % 60 == 0 => plural(b / 60, "minute"),
        b => plural(b, "second"),
    }
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// `CASE WHEN is_subnet_of(cidr, col) THEN name ... ELSE 'other' END`.
fn block_case(cidrs: &[NamedCidr], column: &str) -> String {
    let mut s = String::from("CASE");
    for c in cidrs {
        s.push_str(&format!(
            " WHEN is_subnet_of({}, {column}) THEN {}",
            quote_str(&c.cidr),
            quote_str(&c.name)
        ));
    }
    s.push_str(" ELSE 'other' END");
    s
}

/// Every section and panel, for time bucket `bucket` (seconds).
pub fn specs(opts: &ReportOptions, bucket: i64) -> Vec<SectionSpec> {
    let b = bucket;
    let per = bucket_name(b);
    let time = format!("from_unixtime(__time__ - __time__ % {b}) AS time");
    let cidrs = if opts.cidrs.is_empty() {
        NamedCidr::defaults()
    } else {
        opts.cidrs.clone()
    };
    let src_block = block_case(&cidrs, "srcaddr");
    let dst_block = block_case(&cidrs, "dstaddr");
    let panel = |id, title: &str, note: &str, query: String, chart| PanelSpec {
        id,
        title: title.to_string(),
        note: note.to_string(),
        query,
        chart,
    };
    vec![
        SectionSpec {
            id: "overview",
            title: "Overview",
            panels: vec![
                panel(
                    "totals",
                    "Totals",
                    "Records by status, and the traffic they carry.",
                    TOTALS_QUERY.to_string(),
                    Chart::None,
                ),
                panel(
                    "verdicts",
                    "Accepted vs rejected",
                    &format!("Bytes of accepted and rejected streams, per {per}."),
                    format!(
                        "* | SELECT {time},
       sum(CASE WHEN action = 'ACCEPT' THEN bytes ELSE 0 END) AS accepted_bytes,
       sum(CASE WHEN action = 'REJECT' THEN bytes ELSE 0 END) AS rejected_bytes,
       sum(CASE WHEN action = 'ACCEPT' THEN 1 ELSE 0 END) AS accepted_streams,
       sum(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS rejected_streams
FROM log WHERE \"log-status\" = 'OK'
GROUP BY time ORDER BY time"
                    ),
                    Chart::Lines {
                        x: "time",
                        series: None,
                        y: vec!["accepted_bytes", "rejected_bytes"],
                        measure: Measure::Bytes,
                    },
                ),
                panel(
                    "directions",
                    "Inbound vs outbound",
                    &format!("Bytes arriving at (in) and leaving (out) the interfaces, per {per}."),
                    format!(
                        "* | SELECT {time},
       sum(CASE WHEN direction = 'in' THEN bytes ELSE 0 END) AS in_bytes,
       sum(CASE WHEN direction = 'out' THEN bytes ELSE 0 END) AS out_bytes,
       sum(CASE WHEN direction = 'in' THEN packets ELSE 0 END) AS in_packets,
       sum(CASE WHEN direction = 'out' THEN packets ELSE 0 END) AS out_packets
FROM log WHERE \"log-status\" = 'OK'
GROUP BY time ORDER BY time"
                    ),
                    Chart::Lines {
                        x: "time",
                        series: None,
                        y: vec!["in_bytes", "out_bytes"],
                        measure: Measure::Bytes,
                    },
                ),
                panel(
                    "interfaces",
                    "Totals per interface",
                    "Bytes in and out, packets, and streams per interface.",
                    "* | SELECT \"eni-id\",
       sum(CASE WHEN direction = 'in' THEN bytes ELSE 0 END) AS in_bytes,
       sum(CASE WHEN direction = 'out' THEN bytes ELSE 0 END) AS out_bytes,
       COALESCE(sum(packets), 0) AS packets,
       count(srcaddr) AS streams,
       sum(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS rejected_streams
FROM log
GROUP BY \"eni-id\" ORDER BY in_bytes + out_bytes DESC, \"eni-id\""
                        .to_string(),
                    Chart::Bars {
                        labels: vec!["eni-id"],
                        values: vec!["in_bytes", "out_bytes"],
                        stacked: true,
                        measure: Measure::Bytes,
                    },
                ),
            ],
        },
        SectionSpec {
            id: "policy",
            title: "Policy statistics",
            panels: vec![
                panel(
                    "tuples",
                    "Accepted and rejected streams by 5-tuple",
                    "The 20 busiest 5-tuples: stream records accepted and rejected by the security policy.",
                    "* | SELECT CASE protocol WHEN 6 THEN 'TCP' WHEN 17 THEN 'UDP' WHEN 1 THEN 'ICMP'
                WHEN 58 THEN 'ICMPv6' ELSE CAST(protocol AS VARCHAR) END AS proto,
       srcaddr, COALESCE(CAST(srcport AS VARCHAR), '-') AS sport,
       dstaddr, COALESCE(CAST(dstport AS VARCHAR), '-') AS dport,
       sum(CASE WHEN action = 'ACCEPT' THEN 1 ELSE 0 END) AS accepted,
       sum(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS rejected,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM log WHERE \"log-status\" = 'OK'
GROUP BY protocol, srcaddr, srcport, dstaddr, dstport
ORDER BY accepted + rejected DESC, bytes DESC, srcaddr, dstaddr, sport, dport
LIMIT 20"
                        .to_string(),
                    Chart::Bars {
                        labels: vec!["proto", "srcaddr", "sport", "dstaddr", "dport"],
                        values: vec!["accepted", "rejected"],
                        stacked: true,
                        measure: Measure::Count,
                    },
                ),
                panel(
                    "rejects",
                    "Rejected streams by destination",
                    "Where rejected traffic was going: the 15 destinations with the most rejected stream records.",
                    "action: REJECT | SELECT dstaddr, COALESCE(CAST(dstport AS VARCHAR), '-') AS dport,
       count(*) AS rejected, count(DISTINCT srcaddr) AS sources,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM log
GROUP BY dstaddr, dstport
ORDER BY rejected DESC, bytes DESC, dstaddr, dport
LIMIT 15"
                        .to_string(),
                    Chart::Bars {
                        labels: vec!["dstaddr", "dport"],
                        values: vec!["rejected"],
                        stacked: true,
                        measure: Measure::Count,
                    },
                ),
            ],
        },
        SectionSpec {
            id: "interfaces",
            title: "Interface traffic",
            panels: vec![
                panel(
                    "interface_time",
                    "Traffic per interface",
                    &format!("Bytes in and out of each interface, per {per}."),
                    format!(
                        "* | SELECT {time}, \"eni-id\",
       sum(CASE WHEN direction = 'in' THEN bytes ELSE 0 END) AS in_bytes,
       sum(CASE WHEN direction = 'out' THEN bytes ELSE 0 END) AS out_bytes
FROM log WHERE \"log-status\" = 'OK'
GROUP BY time, \"eni-id\" ORDER BY time, \"eni-id\""
                    ),
                    Chart::Lines {
                        x: "time",
                        series: Some("eni-id"),
                        y: vec!["in_bytes", "out_bytes"],
                        measure: Measure::Bytes,
                    },
                ),
                panel(
                    "windows",
                    "Capture windows per interface",
                    "Stream records, windows without traffic (NODATA), and windows where streams could not be recorded (SKIPDATA) with what they missed.",
                    "* | SELECT \"eni-id\",
       sum(CASE WHEN \"log-status\" = 'OK' THEN 1 ELSE 0 END) AS stream_records,
       sum(CASE WHEN \"log-status\" = 'NODATA' THEN 1 ELSE 0 END) AS nodata_windows,
       sum(CASE WHEN \"log-status\" = 'SKIPDATA' THEN 1 ELSE 0 END) AS skipdata_windows,
       COALESCE(sum(\"skipped-streams\"), 0) AS skipped_streams,
       COALESCE(sum(\"skipped-bytes\"), 0) AS skipped_bytes
FROM log
GROUP BY \"eni-id\" ORDER BY \"eni-id\""
                        .to_string(),
                    Chart::Bars {
                        labels: vec!["eni-id"],
                        values: vec!["nodata_windows", "skipdata_windows"],
                        stacked: false,
                        measure: Measure::Count,
                    },
                ),
            ],
        },
        SectionSpec {
            id: "hosts",
            title: "Host to host",
            panels: vec![
                panel(
                    "pairs",
                    "Top host pairs",
                    "The 10 source → destination pairs with the most bytes.",
                    "* | SELECT srcaddr, dstaddr, sum(bytes) AS bytes, sum(packets) AS packets,
       count(*) AS streams
FROM log WHERE \"log-status\" = 'OK'
GROUP BY srcaddr, dstaddr
ORDER BY bytes DESC, srcaddr, dstaddr
LIMIT 10"
                        .to_string(),
                    Chart::Bars {
                        labels: vec!["srcaddr", "dstaddr"],
                        values: vec!["bytes"],
                        stacked: true,
                        measure: Measure::Bytes,
                    },
                ),
                panel(
                    "pair_rate",
                    "Rate of the top 5 pairs",
                    &format!("Bit rate of the five busiest pairs, averaged per {per}."),
                    format!(
                        "* | WITH top AS (
  SELECT srcaddr, dstaddr FROM log WHERE \"log-status\" = 'OK'
  GROUP BY srcaddr, dstaddr ORDER BY sum(bytes) DESC, srcaddr, dstaddr LIMIT 5)
SELECT from_unixtime(l.__time__ - l.__time__ % {b}) AS time,
       concat(l.srcaddr, ' -> ', l.dstaddr) AS pair,
       sum(l.bytes) * 8 / {b} AS bps
FROM log l JOIN top t ON l.srcaddr = t.srcaddr AND l.dstaddr = t.dstaddr
GROUP BY time, pair ORDER BY time, pair"
                    ),
                    Chart::Lines {
                        x: "time",
                        series: Some("pair"),
                        y: vec!["bps"],
                        measure: Measure::BitsPerSecond,
                    },
                ),
            ],
        },
        SectionSpec {
            id: "cidrs",
            title: "CIDR to CIDR",
            panels: vec![
                panel(
                    "cidr_matrix",
                    "Traffic between CIDR blocks",
                    &format!(
                        "Bytes from each block (rows) to each block (columns). Blocks: {}; anything else is `other`.",
                        cidrs
                            .iter()
                            .map(|c| format!("{} = {}", c.name, c.cidr))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "* | SELECT {src_block} AS src_block,
       {dst_block} AS dst_block,
       sum(bytes) AS bytes, sum(packets) AS packets, count(*) AS streams
FROM log WHERE \"log-status\" = 'OK'
GROUP BY src_block, dst_block
ORDER BY bytes DESC, src_block, dst_block"
                    ),
                    Chart::Matrix {
                        row: "src_block",
                        col: "dst_block",
                        value: "bytes",
                        measure: Measure::Bytes,
                    },
                ),
                panel(
                    "cidr_totals",
                    "Sent and received per block",
                    "Bytes each block sent and received.",
                    format!(
                        "* | WITH b AS (
  SELECT {src_block} AS src_block, {dst_block} AS dst_block, bytes
  FROM log WHERE \"log-status\" = 'OK'),
sent AS (SELECT src_block AS block, sum(bytes) AS sent FROM b GROUP BY src_block),
received AS (SELECT dst_block AS block, sum(bytes) AS received FROM b GROUP BY dst_block)
SELECT COALESCE(s.block, r.block) AS block,
       COALESCE(s.sent, 0) AS sent_bytes, COALESCE(r.received, 0) AS received_bytes
FROM sent s FULL OUTER JOIN received r ON s.block = r.block
ORDER BY sent_bytes + received_bytes DESC, block"
                    ),
                    Chart::Bars {
                        labels: vec!["block"],
                        values: vec!["sent_bytes", "received_bytes"],
                        stacked: false,
                        measure: Measure::Bytes,
                    },
                ),
            ],
        },
    ]
}

/// A panel with its result.
#[derive(Clone, Debug)]
pub struct Panel {
    pub spec: PanelSpec,
    pub result: QueryResult,
}

/// A section with its results.
#[derive(Clone, Debug)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub panels: Vec<Panel>,
}

/// A finished report.
#[derive(Clone, Debug)]
pub struct Report {
    pub sections: Vec<Section>,
    /// Time bucket of the time charts, seconds.
    pub bucket: i64,
    /// Unix seconds of the first and last record start (None: no records).
    pub span: Option<(i64, i64)>,
    pub files: Vec<String>,
    pub tz: chrono_tz::Tz,
    pub range: crate::TimeRange,
    /// Unix seconds when the report was made.
    pub generated: i64,
}

impl Report {
    /// A panel by id.
    pub fn panel(&self, id: &str) -> Option<&Panel> {
        self.sections
            .iter()
            .flat_map(|s| &s.panels)
            .find(|p| p.spec.id == id)
    }
}

/// Column `name` of `result` as i64 values (timestamps as unix seconds).
pub fn int_column(result: &QueryResult, name: &str) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    let Ok(idx) = result.schema.index_of(name) else {
        return out;
    };
    for b in &result.batches {
        let col = b.column(idx);
        let col = match col.data_type() {
            DataType::Timestamp(unit, _) => {
                let secs = cast(col, &DataType::Timestamp(*unit, None))
                    .and_then(|c| cast(&c, &DataType::Int64))
                    .ok();
                let div = match unit {
                    datafusion::arrow::datatypes::TimeUnit::Second => 1,
                    datafusion::arrow::datatypes::TimeUnit::Millisecond => 1_000,
                    datafusion::arrow::datatypes::TimeUnit::Microsecond => 1_000_000,
                    datafusion::arrow::datatypes::TimeUnit::Nanosecond => 1_000_000_000,
                };
                if let Some(secs) = secs {
                    let a = secs.as_primitive::<Int64Type>();
                    out.extend(a.iter().map(|v| v.map(|v| v.div_euclid(div))));
                }
                continue;
            }
            _ => cast(col, &DataType::Int64).ok(),
        };
        if let Some(c) = col {
            out.extend(c.as_primitive::<Int64Type>().iter());
        }
    }
    out
}

/// Column `name` of `result` as f64 values.
pub fn float_column(result: &QueryResult, name: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    let Ok(idx) = result.schema.index_of(name) else {
        return out;
    };
    for b in &result.batches {
        if let Ok(c) = cast(b.column(idx), &DataType::Float64) {
            out.extend(c.as_primitive::<Float64Type>().iter());
        }
    }
    out
}

/// Column `name` of `result` as display text.
pub fn text_column(result: &QueryResult, name: &str) -> Vec<Option<String>> {
    let Ok(idx) = result.schema.index_of(name) else {
        return Vec::new();
    };
    output::rows(result)
        .map(|rows| rows.into_iter().map(|mut r| r.swap_remove(idx)).collect())
        .unwrap_or_default()
}

/// Run every panel's query.
pub fn build(engine: &mut Engine, opts: &ReportOptions, now: i64) -> Result<Report, QueryError> {
    let totals = engine.query(TOTALS_QUERY)?;
    let first = int_column(&totals, "first_start")
        .first()
        .copied()
        .flatten();
    let last = int_column(&totals, "last_start").first().copied().flatten();
    let span = first.zip(last);
    let bucket = span.map_or(60, |(f, l)| choose_bucket(f, l));
    let mut sections = Vec::new();
    for s in specs(opts, bucket) {
        let mut panels = Vec::new();
        for p in s.panels {
            let result = if p.id == "totals" {
                totals.clone()
            } else {
                engine.query(&p.query)?
            };
            panels.push(Panel { spec: p, result });
        }
        sections.push(Section {
            id: s.id,
            title: s.title,
            panels,
        });
    }
    Ok(Report {
        sections,
        bucket,
        span,
        files: engine
            .files()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        tz: engine.tz(),
        range: engine.range(),
        generated: now,
    })
}

/// Rows of a table shown in the terminal and on the page.
pub const MAX_TABLE_ROWS: usize = 50;

/// Print every panel's table.
pub fn write_terminal(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    for s in &report.sections {
        writeln!(out, "== {} ==", s.title)?;
        writeln!(out)?;
        for p in &s.panels {
            writeln!(out, "-- {}: {}", p.spec.title, p.spec.note)?;
            let shown = truncated(&p.result, MAX_TABLE_ROWS);
            out.write_all(output::table_string(&shown)?.as_bytes())?;
            let n = p.result.num_rows();
            if n > MAX_TABLE_ROWS {
                writeln!(
                    out,
                    "... {} more rows in the HTML report",
                    n - MAX_TABLE_ROWS
                )?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

/// The first `n` rows of a result.
pub fn truncated(result: &QueryResult, n: usize) -> QueryResult {
    let mut left = n;
    let mut batches = Vec::new();
    for b in &result.batches {
        if left == 0 {
            break;
        }
        let take = b.num_rows().min(left);
        batches.push(b.slice(0, take));
        left -= take;
    }
    QueryResult {
        schema: result.schema.clone(),
        batches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(choose_bucket(0, 0), 60);
        assert_eq!(choose_bucket(0, 3 * 3600 - 60), 60);
        assert_eq!(choose_bucket(0, 3 * 3600), 300);
        assert_eq!(choose_bucket(0, 40 * 86_400), 21_600);
        assert_eq!(choose_bucket(0, 100 * 86_400), 86_400);
        assert_eq!(bucket_name(60), "1 minute");
        assert_eq!(bucket_name(300), "5 minutes");
        assert_eq!(bucket_name(3600), "1 hour");
    }

    #[test]
    fn cidr_flags() {
        let c = NamedCidr::parse("vpc-a=10.0.0.0/16").unwrap();
        assert_eq!((c.name.as_str(), c.cidr.as_str()), ("vpc-a", "10.0.0.0/16"));
        assert!(NamedCidr::parse("10.0.0.0/16").is_err());
        assert!(NamedCidr::parse("=10.0.0.0/16").is_err());
        assert!(NamedCidr::parse("a=10.0.0.0/40").is_err());
        assert_eq!(
            block_case(&[c], "srcaddr"),
            "CASE WHEN is_subnet_of('10.0.0.0/16', srcaddr) THEN 'vpc-a' ELSE 'other' END"
        );
    }
}
