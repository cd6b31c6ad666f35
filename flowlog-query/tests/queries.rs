//! The issue's queries, the search syntax, types, functions, formats and errors,
//! over generated logs, checked against figures computed here in plain Rust.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::*;
use flowlog_query::{
    cli::{QueryCommand, RangeFlags},
    output::{self, OutputFormat},
    QueryError, TimeRange,
};

const EXAMPLE_1: &str = r#"* | select "eni-id",srcaddr,dstaddr,direction,sum(bytes) as byte from log GROUP BY "eni-id",srcaddr,dstaddr,direction ORDER BY "eni-id" DESC limit 10"#;
const EXAMPLE_2: &str = "dstaddr:10.0.0.1 AND dstport:80 | SELECT srcaddr, SUM(CASE WHEN action = 'ACCEPT' THEN 1 ELSE 0 END) AS accept_count, SUM(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS reject_count FROM log GROUP BY srcaddr ORDER BY accept_count + reject_count DESC";
const EXAMPLE_3: &str = "direction: 'in' and srcaddr: 10.0.0.* | select date_format(from_unixtime(__time__ - __time__% 60), '%H:%i:%S') as time, concat(srcaddr,'->', dstaddr), sum(bytes*8/60) as bandwidth group by time,srcaddr,dstaddr order by time asc limit 100";

#[test]
fn example_1_bytes_per_interface_pair_and_direction() {
    let logs = logs("ex1");
    let mut e = engine(&logs, Tz::UTC);
    let (cols, rows) = q(&mut e, EXAMPLE_1);
    assert_eq!(cols, ["eni-id", "srcaddr", "dstaddr", "direction", "byte"]);

    type Key = (String, Option<String>, Option<String>, Option<String>);
    let mut expected: BTreeMap<Key, Option<i64>> = BTreeMap::new();
    for r in &logs.records {
        let k = (
            r.eni_id.to_string(),
            r.srcaddr.clone(),
            r.dstaddr.clone(),
            r.direction.map(str::to_string),
        );
        let e = expected.entry(k).or_insert(None);
        if let Some(b) = r.bytes {
            *e = Some(e.unwrap_or(0) + b as i64);
        }
    }
    // ORDER BY "eni-id" DESC LIMIT 10: ten groups of the last interfaces in order.
    let mut enis: Vec<&String> = expected.keys().map(|k| &k.0).collect();
    enis.sort_by(|a, b| b.cmp(a));
    let got_enis: Vec<String> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
    let want_enis: Vec<String> = enis.iter().take(10).map(|s| s.to_string()).collect();
    assert_eq!(got_enis, want_enis);
    let mut seen = BTreeSet::new();
    for r in &rows {
        let k = (
            r[0].clone().unwrap(),
            r[1].clone(),
            r[2].clone(),
            r[3].clone(),
        );
        assert!(seen.insert(k.clone()), "duplicate group {k:?}");
        let want = expected
            .get(&k)
            .unwrap_or_else(|| panic!("unexpected group {k:?}"));
        assert_eq!(r[4], os(want), "{k:?}");
    }
}

#[test]
fn example_2_accepts_and_rejects_per_source_of_a_service() {
    let logs = logs("ex2");
    let mut e = engine(&logs, Tz::UTC);
    let (cols, rows) = q(&mut e, EXAMPLE_2);
    assert_eq!(cols, ["srcaddr", "accept_count", "reject_count"]);
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &logs.records {
        if r.dstaddr.as_deref() == Some("10.0.0.1") && r.dstport == Some(80) {
            let c = expected.entry(r.srcaddr.clone().unwrap()).or_default();
            match r.action {
                Some("ACCEPT") => c.0 += 1,
                Some("REJECT") => c.1 += 1,
                _ => {}
            }
        }
    }
    assert!(expected.len() >= 3, "the sample must exercise this query");
    assert!(expected.values().any(|c| c.1 > 0), "and have rejects");
    let got: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                (
                    r[1].as_ref().unwrap().parse().unwrap(),
                    r[2].as_ref().unwrap().parse().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let totals: Vec<i64> = rows
        .iter()
        .map(|r| got[r[0].as_ref().unwrap()].0 + got[r[0].as_ref().unwrap()].1)
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
}

fn example_3_expected(logs: &Logs, tz: Tz) -> BTreeMap<(String, String), i64> {
    let mut expected = BTreeMap::new();
    for r in &logs.records {
        let (Some(src), Some(dst)) = (&r.srcaddr, &r.dstaddr) else {
            continue;
        };
        if r.direction != Some("in") || !src.starts_with("10.0.0.") {
            continue;
        }
        let minute = r.start - r.start % 60;
        let time = DateTime::<Utc>::from_timestamp(minute, 0)
            .unwrap()
            .with_timezone(&tz)
            .format("%H:%M:%S")
            .to_string();
        // bytes*8/60 per record, in integers, then summed.
        *expected.entry((time, format!("{src}->{dst}"))).or_insert(0) +=
            r.bytes.unwrap() as i64 * 8 / 60;
    }
    expected
}

#[test]
fn example_3_bandwidth_per_minute_in_two_zones() {
    let logs = logs("ex3");
    for tz in [Tz::UTC, Tz::Asia__Kolkata] {
        let mut e = engine(&logs, tz);
        let (cols, rows) = q(&mut e, EXAMPLE_3);
        assert_eq!(cols, ["time", "_col1", "bandwidth"]);
        let expected = example_3_expected(&logs, tz);
        assert!(expected.len() > 20, "the sample must exercise this query");
        assert_eq!(rows.len(), expected.len().min(100));
        let times: Vec<&String> = rows.iter().map(|r| r[0].as_ref().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordered by time");
        for r in &rows {
            let k = (r[0].clone().unwrap(), r[1].clone().unwrap());
            assert_eq!(r[2], s(expected[&k]), "{k:?} in {tz}");
        }
        if tz == Tz::Asia__Kolkata {
            // 09:10 UTC is 14:40 in Kolkata (+05:30).
            assert!(times.iter().all(|t| t.as_str() >= "14:40:00"), "{times:?}");
        }
    }
}

fn count_where(logs: &Logs, f: impl Fn(&HashMap<String, String>) -> bool) -> i64 {
    logs.raw.iter().filter(|r| f(r)).count() as i64
}

fn field<'a>(r: &'a HashMap<String, String>, k: &str) -> &'a str {
    r.get(k).map_or("", String::as_str)
}

#[test]
fn search_syntax_matches_plain_rust_filters() {
    let logs = logs("search");
    let mut e = engine(&logs, Tz::UTC);
    type Filter = Box<dyn Fn(&HashMap<String, String>) -> bool>;
    let cases: Vec<(&str, Filter)> = vec![
        ("*", Box::new(|_| true)),
        ("", Box::new(|_| true)),
        (
            "action: ACCEPT",
            Box::new(|r| field(r, "action") == "ACCEPT"),
        ),
        (
            "action:accept",
            Box::new(|r| field(r, "action") == "ACCEPT"),
        ),
        (
            "srcaddr: 10.0.0.*",
            Box::new(|r| field(r, "srcaddr").starts_with("10.0.0.")),
        ),
        (
            "srcaddr: 10.0.0.? ",
            Box::new(|r| {
                let s = field(r, "srcaddr");
                s.starts_with("10.0.0.") && s.len() == 8
            }),
        ),
        (
            "not action: REJECT",
            Box::new(|r| field(r, "action") != "REJECT"),
        ),
        (
            "dstport: 80 or dstport:443",
            Box::new(|r| matches!(field(r, "dstport"), "80" | "443")),
        ),
        (
            "(eni-id: eni-a OR eni-id: 'eni-b') AND NOT direction: in",
            Box::new(|r| {
                matches!(field(r, "eni-id"), "eni-a" | "eni-b") && field(r, "direction") != "in"
            }),
        ),
        (
            "eni-id: eni-c action: REJECT",
            Box::new(|r| field(r, "eni-id") == "eni-c" && field(r, "action") == "REJECT"),
        ),
        (
            "bytes > 100000 and packets <= 500",
            Box::new(|r| {
                field(r, "bytes").parse::<i64>().is_ok_and(|b| b > 100_000)
                    && field(r, "packets").parse::<i64>().is_ok_and(|p| p <= 500)
            }),
        ),
        (
            "log-status: NODATA",
            Box::new(|r| field(r, "log-status") == "NODATA"),
        ),
        ("srcport: -", Box::new(|r| field(r, "srcport") == "-")),
        (
            "rule-id: default",
            Box::new(|r| field(r, "rule-id") == "default"),
        ),
        (
            "not rule-id: default",
            Box::new(|r| field(r, "rule-id") != "default"),
        ),
        (
            "skipped-streams > 0",
            Box::new(|r| {
                field(r, "skipped-streams")
                    .parse::<i64>()
                    .is_ok_and(|n| n > 0)
            }),
        ),
        (
            "srcaddr: fd00::*",
            Box::new(|r| field(r, "srcaddr").starts_with("fd00::")),
        ),
        (
            "120.26.1.1",
            Box::new(|r| r.values().any(|v| v == "120.26.1.1")),
        ),
        (
            "__time__ >= 1720776000 and __time__ < 1720776600",
            Box::new(|r| {
                let t: i64 = field(r, "start").parse().unwrap();
                (1_720_776_000..1_720_776_600).contains(&t)
            }),
        ),
        (
            "-- only web traffic\ndstport: 80 -- to the service\n and dstaddr: 10.0.0.1",
            Box::new(|r| field(r, "dstport") == "80" && field(r, "dstaddr") == "10.0.0.1"),
        ),
    ];
    for (search, filter) in cases {
        let want = count_where(&logs, filter);
        let got = scalar(&mut e, &format!("{search} | select count(*)"));
        assert_eq!(got, Some(want), "search {search:?}");
    }
    // A search alone lists the records, ordered by time.
    let (cols, rows) = q(&mut e, "action: REJECT");
    assert_eq!(cols.first().map(String::as_str), Some("version"));
    assert_eq!(cols.last().map(String::as_str), Some("__time__"));
    assert_eq!(
        rows.len() as i64,
        count_where(&logs, |r| field(r, "action") == "REJECT")
    );
    let t = cols.iter().position(|c| c == "__time__").unwrap();
    let times: Vec<i64> = rows
        .iter()
        .map(|r| r[t].as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn columns_are_typed_and_dashes_are_null() {
    let logs = logs("types");
    let mut e = engine(&logs, Tz::UTC);
    let r = e.query("* | select * from log limit 1").unwrap();
    let types: HashMap<String, String> = r
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    for n in [
        "version",
        "protocol",
        "srcport",
        "dstport",
        "packets",
        "bytes",
        "start",
        "end",
        "tcp-flags",
        "traffic_path",
        "skipped-streams",
        "skipped-bytes",
        "__time__",
    ] {
        assert_eq!(types[n], "Int64", "{n}");
    }
    for n in ["eni-id", "srcaddr", "action", "log-status", "rule-id"] {
        assert!(types[n].contains("Utf8"), "{n}: {}", types[n]);
    }

    let n = logs.records.len() as i64;
    let streams = logs.records.iter().filter(|r| r.log_status == "OK").count() as i64;
    let ported = logs.records.iter().filter(|r| r.srcport.is_some()).count() as i64;
    let skipped: i64 = logs
        .records
        .iter()
        .filter_map(|r| r.skipped)
        .map(|s| s.0 as i64)
        .sum();
    let ruled = logs.records.iter().filter(|r| r.rule_id.is_some()).count() as i64;
    let with_path = logs
        .records
        .iter()
        .filter(|r| r.traffic_path.is_some())
        .count() as i64;
    let (_, rows) = q(
        &mut e,
        r#"* | select count(*), count(srcaddr), count(bytes), count(srcport), sum("skipped-streams"), count("rule-id"), count(traffic_path), sum(__time__ - start), count("account-id") from log"#,
    );
    assert_eq!(
        rows[0],
        [
            s(n),
            s(streams),
            s(streams),
            s(ported),
            s(skipped),
            s(ruled),
            s(with_path),
            s(0),
            s(n)
        ]
    );
    // NODATA and SKIPDATA: every traffic field NULL, metadata as written.
    let (_, rows) = q(
        &mut e,
        r#"log-status: NODATA OR log-status: SKIPDATA | select srcaddr, dstport, bytes, direction, action, "tcp-flags", "eni-id", "account-id" from log"#,
    );
    assert!(rows.len() > 2);
    for r in rows {
        assert_eq!(&r[..6], [None, None, None, None, None, None]);
        assert!(r[6].is_some() && r[7] == s("1210123456"));
    }
}

#[test]
fn log_service_conveniences() {
    let logs = logs("conv");
    let mut e = engine(&logs, Tz::UTC);
    let n = Some(logs.records.len() as i64);
    assert_eq!(scalar(&mut e, "* | select count(*)"), n);
    assert_eq!(scalar(&mut e, "* | SELECT COUNT(*) FROM log"), n);
    assert_eq!(scalar(&mut e, "select count(*) from log"), n);
    assert_eq!(
        scalar(
            &mut e,
            "-- all records\n* | -- count them\nselect count(*) -- here\n"
        ),
        n
    );
    // FROM log inserted in CTEs, subqueries and UNION branches too.
    assert_eq!(
        scalar(
            &mut e,
            "* | with t as (select bytes) select count(*) from t where bytes is not null"
        ),
        Some(logs.records.iter().filter(|r| r.bytes.is_some()).count() as i64)
    );
    assert_eq!(
        scalar(
            &mut e,
            "* | select count(*) from (select 1 as x union all select 2)"
        ),
        n.map(|n| 2 * n)
    );
    // Unnamed expressions are _colN, plain columns keep their names.
    let (cols, _) = q(
        &mut e,
        "* | select srcaddr, count(*), log.dstaddr, 1 + 1 group by srcaddr, dstaddr",
    );
    assert_eq!(cols, ["srcaddr", "_col1", "dstaddr", "_col3"]);
}

#[test]
fn sql_features() {
    let logs = logs("sql");
    let mut e = engine(&logs, Tz::UTC);
    let rejects = logs
        .records
        .iter()
        .filter(|r| r.action == Some("REJECT"))
        .count() as i64;
    // CASE, NULLIF, COALESCE, LIKE.
    assert_eq!(
        scalar(
            &mut e,
            "* | select sum(case when coalesce(nullif(action, 'ACCEPT'), 'x') = 'REJECT' then 1 else 0 end)"
        ),
        Some(rejects)
    );
    let like = logs
        .records
        .iter()
        .filter(|r| {
            r.srcaddr
                .as_deref()
                .is_some_and(|s| s.starts_with("192.168."))
        })
        .count() as i64;
    assert_eq!(
        scalar(&mut e, "* | select count(*) where srcaddr like '192.168.%'"),
        Some(like)
    );
    // WITH + FULL OUTER JOIN: interfaces seen sending vs receiving port 80.
    let mut sent: BTreeMap<&str, i64> = BTreeMap::new();
    let mut got: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &logs.records {
        if r.dstport == Some(80) {
            *sent.entry(r.eni_id).or_default() += 1;
        }
        if r.srcport == Some(80) {
            *got.entry(r.eni_id).or_default() += 1;
        }
    }
    let (_, rows) = q(
        &mut e,
        r#"* | with a as (select "eni-id" as eni, count(*) as n from log where dstport = 80 group by "eni-id"),
                  b as (select "eni-id" as eni, count(*) as n from log where srcport = 80 group by "eni-id")
             select coalesce(a.eni, b.eni) as eni, coalesce(a.n, 0) as to80, coalesce(b.n, 0) as from80
             from a full outer join b on a.eni = b.eni order by eni desc"#,
    );
    let enis: BTreeSet<&str> = sent.keys().chain(got.keys()).copied().collect();
    let want: Vec<Vec<Option<String>>> = enis
        .iter()
        .rev()
        .map(|k| {
            vec![
                s(k),
                s(sent.get(k).copied().unwrap_or(0)),
                s(got.get(k).copied().unwrap_or(0)),
            ]
        })
        .collect();
    assert_eq!(rows, want);
    // is_subnet_of.
    let in_net = logs
        .records
        .iter()
        .filter(|r| {
            r.dstaddr
                .as_deref()
                .is_some_and(|d| d.starts_with("10.1.0."))
        })
        .count() as i64;
    assert_eq!(
        scalar(
            &mut e,
            "* | select count(*) where is_subnet_of('10.1.0.0/24', dstaddr)"
        ),
        Some(in_net)
    );
}

#[test]
fn time_functions_follow_the_log_service() {
    let logs = logs("time");
    // 1720775400 = 2024-07-12 09:10:00 UTC = 05:10:00 EDT = 14:40:00 IST.
    let t = 1_720_775_425;
    for (tz, shown, hour_start, day_start) in [
        (Tz::UTC, "2024-07-12 09:10:25", 1_720_774_800, 1_720_742_400),
        (
            Tz::America__New_York,
            "2024-07-12 05:10:25",
            1_720_774_800,
            1_720_756_800,
        ),
        (
            Tz::Asia__Kolkata,
            "2024-07-12 14:40:25",
            1_720_774_800 - 1800,
            1_720_722_600,
        ),
    ] {
        let mut e = engine(&logs, tz);
        let (_, rows) = q(
            &mut e,
            &format!(
                "* | select from_unixtime({t}), date_trunc('minute', {t}), date_trunc('hour', {t}),
                    date_trunc('day', {t}), date_format({t}, '%Y-%m-%d %H:%i:%S'),
                    date_format(from_unixtime({t}), '%H:%i'), from_unixtime({t}, 'UTC'),
                    date_format(date_trunc('hour', from_unixtime({t})), '%H:%i:%s')
                  from log limit 1"
            ),
        );
        let hm = &shown[11..16];
        assert_eq!(
            rows[0],
            [
                s(shown),
                s(1_720_775_400),
                s(hour_start),
                s(day_start),
                s(shown),
                s(hm),
                s("2024-07-12 09:10:25"),
                s(format!("{}:00:00", &shown[11..13])),
            ],
            "{tz}"
        );
    }
    // date_trunc on __time__ groups by minute like __time__ - __time__ % 60.
    let mut e = engine(&logs, Tz::UTC);
    let per_minute: BTreeMap<i64, i64> = logs.records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.start - r.start % 60).or_default() += 1;
        m
    });
    let (_, rows) = q(
        &mut e,
        "* | select date_trunc('minute', __time__) as t, count(*) as n group by t order by t",
    );
    let got: BTreeMap<i64, i64> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_ref().unwrap().parse().unwrap(),
                r[1].as_ref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, per_minute);
}

#[test]
fn time_range_filters_on_start() {
    let logs = logs("range");
    let (from, to) = (1_720_776_000, 1_720_776_900);
    let mut e = engine_range(
        &logs,
        Tz::UTC,
        TimeRange {
            from: Some(from),
            to: Some(to),
        },
    );
    let want = logs
        .records
        .iter()
        .filter(|r| (from..to).contains(&r.start))
        .count() as i64;
    assert!(want > 0 && want < logs.records.len() as i64);
    assert_eq!(scalar(&mut e, "* | select count(*)"), Some(want));
    // RFC 3339 flags give the same range.
    let r = TimeRange::from_flags(
        None,
        Some("2024-07-12T09:20:00Z"),
        Some("2024-07-12T11:35:00+02:00"),
        0,
    )
    .unwrap();
    assert_eq!((r.from, r.to), (Some(from), Some(to)));
}

fn run_cli(logs: &Logs, format: OutputFormat, query: &str) -> (Result<(), QueryError>, String) {
    let cmd = QueryCommand {
        logs: vec![logs.dir.path().to_path_buf()],
        format,
        range: RangeFlags::default(),
        query: query.to_string(),
    };
    let mut out = Vec::new();
    let r = cmd.run(&mut out);
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn bad_queries_report_the_position_and_print_nothing() {
    let logs = logs("bad");
    let cases = [
        // (query, line, column)
        ("* | selec x from log", Some((1, 5))),
        (
            "action: ACCEPT | select count(*)\nfrom log where bytes >> 2 x",
            Some((2, 27)),
        ),
        ("* | select nosuch from log", Some((1, 12))),
        ("* | select nosuchfn(bytes) from log", Some((1, 12))),
        ("srcadr: 10.0.0.1 | select count(*)", Some((1, 1))),
        (
            "action: ACCEPT and (direction: in | select 1",
            Some((1, 34)),
        ),
        ("* | select 'abc", Some((1, 12))),
        ("* | select sum(srcaddr) from log", None),
        (
            "* | select date_trunc('fortnight', __time__) from log",
            None,
        ),
        ("* | drop table log", None),
    ];
    for (query, pos) in cases {
        let (r, out) = run_cli(&logs, OutputFormat::Table, query);
        let err = r.expect_err(query);
        assert_eq!(out, "", "no output for {query:?}");
        assert_eq!(err.exit_code(), 2, "{query:?}: {err}");
        assert!(matches!(err, QueryError::BadQuery { .. }), "{err}");
        if let Some((line, column)) = pos {
            let p = err
                .position()
                .unwrap_or_else(|| panic!("no position: {err}"));
            assert_eq!((p.line, p.column), (line, column), "{query:?}: {err}");
            assert!(err
                .to_string()
                .contains(&format!("at line {line}, column {column}")));
        }
    }
    // A malformed log file fails while running: exit 1, nothing printed.
    std::fs::write(
        logs.dir.path().join("zz-broken.log"),
        "{\"version\":\"1\",\n",
    )
    .unwrap();
    let (r, out) = run_cli(&logs, OutputFormat::Table, "* | select count(*)");
    let err = r.unwrap_err();
    assert_eq!((err.exit_code(), out.as_str()), (1, ""), "{err}");
}

#[test]
fn output_formats() {
    let logs = logs("formats");
    let query = r#"* | select "eni-id", count(*) as n, sum(bytes) as bytes, concat('a,"b', "eni-id") as odd, max(bytes) > 0 as big, avg(packets) as avg from log group by "eni-id" order by "eni-id""#;
    let mut by_eni: BTreeMap<&str, (i64, Option<i64>)> = BTreeMap::new();
    for r in &logs.records {
        let e = by_eni.entry(r.eni_id).or_insert((0, None));
        e.0 += 1;
        if let Some(b) = r.bytes {
            e.1 = Some(e.1.unwrap_or(0) + b as i64);
        }
    }

    let (r, json) = run_cli(&logs, OutputFormat::Json, query);
    r.unwrap();
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), by_eni.len());
    for (line, (eni, (n, bytes))) in lines.iter().zip(&by_eni) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["eni-id"], *eni);
        assert_eq!(v["n"], *n);
        assert_eq!(v["bytes"], bytes.unwrap());
        assert_eq!(v["odd"], format!("a,\"b{eni}"));
        assert_eq!(v["big"], true);
        assert!(v["avg"].is_f64());
        // Keys in column order.
        let keys = [
            "\"eni-id\"",
            "\"n\"",
            "\"bytes\"",
            "\"odd\"",
            "\"big\"",
            "\"avg\"",
        ];
        let pos: Vec<usize> = keys.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    let (r, csv) = run_cli(&logs, OutputFormat::Csv, query);
    r.unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("eni-id,n,bytes,odd,big,avg"));
    for (line, (eni, (n, bytes))) in lines.zip(&by_eni) {
        let prefix = format!("{eni},{n},{},\"a,\"\"b{eni}\",true,", bytes.unwrap());
        assert!(line.starts_with(&prefix), "{line} vs {prefix}");
    }

    // NULLs: empty in CSV, null in JSON and the table.
    let q = "log-status: NODATA | select srcaddr, \"eni-id\" from log limit 1";
    let (_, csv) = run_cli(&logs, OutputFormat::Csv, q);
    assert!(csv.lines().nth(1).unwrap().starts_with(",eni-"), "{csv}");
    let (_, json) = run_cli(&logs, OutputFormat::Json, q);
    assert!(
        json.starts_with("{\"srcaddr\":null,\"eni-id\":\"eni-"),
        "{json}"
    );
    let (_, table) = run_cli(&logs, OutputFormat::Table, q);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "srcaddr | eni-id");
    assert_eq!(lines[1], "--------+-------");
    assert!(lines[2].starts_with("null    | eni-"), "{table}");

    // The table right-aligns numbers.
    let mut e = engine(&logs, Tz::UTC);
    let r = e
        .query("* | select 'x' as name, 5 as n union all select 'longer', 12345")
        .unwrap();
    let mut buf = Vec::new();
    output::write(&r, OutputFormat::Table, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.contains("x      |     5") || text.contains("longer | 12345"),
        "{text}"
    );
}

#[test]
fn files_and_directories() {
    let logs = logs("files");
    let dir = logs.dir.path();
    let n = logs.records.len() as i64;
    // A directory reads *.json, *.jsonl, *.log (not notes.txt); a file is read
    // whatever its name; the same file twice counts once.
    let mut e = flowlog_query::Engine::open(&flowlog_query::EngineOptions {
        logs: vec![
            dir.to_path_buf(),
            dir.join("a.json"),
            dir.join("notes.txt").with_extension("json"),
        ],
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: Some(1),
    });
    assert!(
        matches!(e, Err(QueryError::LogPath { .. })),
        "missing file is an error"
    );
    e = flowlog_query::Engine::open(&flowlog_query::EngineOptions {
        logs: vec![dir.to_path_buf(), dir.join("a.json")],
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: Some(1),
    });
    let mut e = e.unwrap();
    assert_eq!(e.files().len(), 4);
    assert_eq!(scalar(&mut e, "* | select count(*)"), Some(n));

    // No records at all: queries run, over nothing.
    let empty = TempDir::new("empty");
    let mut e = flowlog_query::Engine::open(&flowlog_query::EngineOptions {
        logs: vec![empty.path().to_path_buf()],
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: None,
    })
    .unwrap();
    assert_eq!(scalar(&mut e, "* | select count(*)"), Some(0));
}

/// Records as the agent writes them (its record.rs), SKIPDATA's lower-bound flag
/// and an unknown extra field included.
#[test]
fn agent_records_load() {
    let dir = TempDir::new("agent");
    let lines = [
        r#"{"version":"1","account-id":"-","eni-id":"va","vm-id":"-","vswitch-id":"-","vpc-id":"-","type":"IPv4","protocol":"1","srcaddr":"10.99.0.1","srcport":"-","dstaddr":"10.99.0.2","dstport":"-","direction":"out","action":"ACCEPT","packets":"5","bytes":"420","start":"1795305786","end":"1795305790","tcp-flags":"0","log-status":"OK","traffic_path":"-"}"#,
        r#"{"version":"1","account-id":"-","eni-id":"va","vm-id":"-","vswitch-id":"-","vpc-id":"-","type":"-","protocol":"-","srcaddr":"-","srcport":"-","dstaddr":"-","dstport":"-","direction":"-","action":"-","packets":"-","bytes":"-","start":"1795305820","end":"1795305830","tcp-flags":"-","log-status":"SKIPDATA","traffic_path":"-","skipped-streams":"7","skipped-packets":"1000","skipped-bytes":"1500000","skipped-streams-lower-bound":"true","future-field":"x"}"#,
        r#"{"version":"1","account-id":"-","eni-id":"va","vm-id":"-","vswitch-id":"-","vpc-id":"-","type":"IPv4","protocol":"6","srcaddr":"10.99.0.1","srcport":"57860","dstaddr":"10.99.0.2","dstport":"5201","direction":"out","action":"REJECT","packets":"7","bytes":"10773252","start":"1795305810","end":"1795305811","tcp-flags":"27","log-status":"OK","traffic_path":"9","rule-id":"tracked"}"#,
    ];
    std::fs::write(dir.path().join("flows.log"), lines.join("\n") + "\n").unwrap();
    let mut e = flowlog_query::Engine::open(&flowlog_query::EngineOptions {
        logs: vec![dir.path().join("flows.log")],
        range: TimeRange::ALL,
        tz: Tz::UTC,
        threads: None,
    })
    .unwrap();
    let (_, rows) = q(
        &mut e,
        r#"* | select "log-status", bytes, "skipped-bytes", "skipped-streams-lower-bound", "rule-id", traffic_path, srcport from log order by __time__"#,
    );
    assert_eq!(
        rows,
        [
            [s("OK"), s(420), None, None, None, None, None],
            [
                s("OK"),
                s(10_773_252),
                None,
                None,
                s("tracked"),
                s(9),
                s(57860)
            ],
            [
                s("SKIPDATA"),
                None,
                s(1_500_000),
                s("true"),
                None,
                None,
                None
            ],
        ]
    );
}
