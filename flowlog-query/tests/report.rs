//! The report's queries over generated logs, checked against figures computed
//! here in plain Rust; the HTML page and the terminal tables.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::*;
use flowlog_query::{
    output,
    report::{self, html, NamedCidr, ReportOptions},
    sample::SampleRecord,
};

type Rows = Vec<Vec<Option<String>>>;

fn rows(report: &report::Report, id: &str) -> Rows {
    output::rows(
        &report
            .panel(id)
            .unwrap_or_else(|| panic!("panel {id}"))
            .result,
    )
    .unwrap()
}

fn when(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn ok(records: &[SampleRecord]) -> impl Iterator<Item = &SampleRecord> {
    records.iter().filter(|r| r.log_status == "OK")
}

fn b(r: &SampleRecord) -> i64 {
    r.bytes.unwrap_or(0) as i64
}

fn p(r: &SampleRecord) -> i64 {
    r.packets.unwrap_or(0) as i64
}

fn opts() -> ReportOptions {
    ReportOptions {
        cidrs: [
            "vpc-1=10.0.0.0/24",
            "vpc-2=10.1.0.0/24",
            "office=192.168.0.0/16",
        ]
        .iter()
        .map(|c| NamedCidr::parse(c).unwrap())
        .collect(),
    }
}

/// The block of an address, by text prefix (independent of `is_subnet_of`).
fn block(ip: &str) -> &'static str {
    if ip.starts_with("10.0.0.") {
        "vpc-1"
    } else if ip.starts_with("10.1.0.") {
        "vpc-2"
    } else if ip.starts_with("192.168.") {
        "office"
    } else {
        "other"
    }
}

fn port(p: Option<u16>) -> String {
    p.map_or("-".into(), |p| p.to_string())
}

#[test]
fn report_panels_match_independent_figures() {
    let logs = logs("report");
    let recs = &logs.records;
    let mut e = engine(&logs, Tz::UTC);
    let rep = report::build(&mut e, &opts(), 1_800_000_000).unwrap();
    assert_eq!(rep.bucket, 60);

    // Totals.
    let starts: Vec<i64> = recs.iter().map(|r| r.start).collect();
    let count = |st: &str| recs.iter().filter(|r| r.log_status == st).count();
    assert_eq!(
        rows(&rep, "totals"),
        [[
            s(recs.len()),
            s(count("OK")),
            s(count("NODATA")),
            s(count("SKIPDATA")),
            s(recs.iter().map(p).sum::<i64>()),
            s(recs.iter().map(b).sum::<i64>()),
            s(3),
            s(when(*starts.iter().min().unwrap())),
            s(when(*starts.iter().max().unwrap())),
        ]]
    );
    assert!(count("NODATA") > 0 && count("SKIPDATA") > 0);

    // Accepted vs rejected, in vs out, per minute.
    let mut verdicts: BTreeMap<i64, [i64; 4]> = BTreeMap::new();
    let mut directions: BTreeMap<i64, [i64; 4]> = BTreeMap::new();
    for r in ok(recs) {
        let m = r.start - r.start % 60;
        let v = verdicts.entry(m).or_default();
        let d = directions.entry(m).or_default();
        match r.action {
            Some("ACCEPT") => {
                v[0] += b(r);
                v[2] += 1;
            }
            _ => {
                v[1] += b(r);
                v[3] += 1;
            }
        }
        if r.direction == Some("in") {
            d[0] += b(r);
            d[2] += p(r);
        } else {
            d[1] += b(r);
            d[3] += p(r);
        }
    }
    let series = |m: &BTreeMap<i64, [i64; 4]>| -> Rows {
        m.iter()
            .map(|(t, v)| {
                let mut row = vec![s(when(*t))];
                row.extend(v.iter().map(s));
                row
            })
            .collect()
    };
    assert_eq!(rows(&rep, "verdicts"), series(&verdicts));
    assert_eq!(rows(&rep, "directions"), series(&directions));

    // Totals per interface.
    let mut ifs: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for r in recs {
        let v = ifs.entry(r.eni_id).or_default();
        match r.direction {
            Some("in") => v[0] += b(r),
            Some("out") => v[1] += b(r),
            _ => {}
        }
        v[2] += p(r);
        v[3] += i64::from(r.srcaddr.is_some());
        v[4] += i64::from(r.action == Some("REJECT"));
    }
    let mut want: Vec<(&str, [i64; 5])> = ifs.into_iter().collect();
    want.sort_by(|a, b| (b.1[0] + b.1[1]).cmp(&(a.1[0] + a.1[1])).then(a.0.cmp(b.0)));
    let want: Rows = want
        .iter()
        .map(|(k, v)| std::iter::once(s(k)).chain(v.iter().map(s)).collect())
        .collect();
    assert_eq!(rows(&rep, "interfaces"), want);

    // 5-tuples.
    type Tuple = (u8, String, String, String, String);
    let mut tuples: BTreeMap<Tuple, [i64; 4]> = BTreeMap::new();
    for r in ok(recs) {
        let k = (
            r.protocol.unwrap(),
            r.srcaddr.clone().unwrap(),
            port(r.srcport),
            r.dstaddr.clone().unwrap(),
            port(r.dstport),
        );
        let v = tuples.entry(k).or_default();
        if r.action == Some("ACCEPT") {
            v[0] += 1;
        } else {
            v[1] += 1;
        }
        v[2] += p(r);
        v[3] += b(r);
    }
    let mut want: Vec<(Tuple, [i64; 4])> = tuples.into_iter().collect();
    want.sort_by(|(ka, a), (kb, b)| {
        (b[0] + b[1])
            .cmp(&(a[0] + a[1]))
            .then(b[3].cmp(&a[3]))
            .then(ka.1.cmp(&kb.1))
            .then(ka.3.cmp(&kb.3))
            .then(ka.2.cmp(&kb.2))
            .then(ka.4.cmp(&kb.4))
    });
    let proto = |n: u8| match n {
        6 => "TCP".to_string(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    };
    let want: Rows = want
        .iter()
        .take(20)
        .map(|(k, v)| {
            let mut row = vec![s(proto(k.0)), s(&k.1), s(&k.2), s(&k.3), s(&k.4)];
            row.extend(v.iter().map(s));
            row
        })
        .collect();
    assert_eq!(rows(&rep, "tuples"), want);

    // Rejected streams by destination.
    /// Rejected streams, sources, packets, bytes.
    type Rejected = (i64, BTreeSet<String>, i64, i64);
    let mut rej: BTreeMap<(String, String), Rejected> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.action == Some("REJECT")) {
        let v = rej
            .entry((r.dstaddr.clone().unwrap(), port(r.dstport)))
            .or_default();
        v.0 += 1;
        v.1.insert(r.srcaddr.clone().unwrap());
        v.2 += p(r);
        v.3 += b(r);
    }
    let mut want: Vec<_> = rej.into_iter().collect();
    want.sort_by(|(ka, a), (kb, b)| b.0.cmp(&a.0).then(b.3.cmp(&a.3)).then(ka.cmp(kb)));
    let want: Rows = want
        .iter()
        .take(15)
        .map(|(k, v)| vec![s(&k.0), s(&k.1), s(v.0), s(v.1.len()), s(v.2), s(v.3)])
        .collect();
    assert_eq!(rows(&rep, "rejects"), want);

    // Per interface over time.
    let mut it: BTreeMap<(i64, &str), [i64; 2]> = BTreeMap::new();
    for r in ok(recs) {
        let v = it.entry((r.start - r.start % 60, r.eni_id)).or_default();
        if r.direction == Some("in") {
            v[0] += b(r);
        } else {
            v[1] += b(r);
        }
    }
    let want: Rows = it
        .iter()
        .map(|((t, e), v)| vec![s(when(*t)), s(e), s(v[0]), s(v[1])])
        .collect();
    assert_eq!(rows(&rep, "interface_time"), want);

    // Capture windows per interface.
    let mut win: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for r in recs {
        let v = win.entry(r.eni_id).or_default();
        match r.log_status {
            "OK" => v[0] += 1,
            "NODATA" => v[1] += 1,
            _ => v[2] += 1,
        }
        if let Some((st, _, by)) = r.skipped {
            v[3] += st as i64;
            v[4] += by as i64;
        }
    }
    let want: Rows = win
        .iter()
        .map(|(k, v)| std::iter::once(s(k)).chain(v.iter().map(s)).collect())
        .collect();
    assert_eq!(rows(&rep, "windows"), want);

    // Top pairs, and the rate of the top five per minute.
    let mut pairs: BTreeMap<(String, String), [i64; 3]> = BTreeMap::new();
    for r in ok(recs) {
        let v = pairs
            .entry((r.srcaddr.clone().unwrap(), r.dstaddr.clone().unwrap()))
            .or_default();
        v[0] += b(r);
        v[1] += p(r);
        v[2] += 1;
    }
    let mut ranked: Vec<_> = pairs.into_iter().collect();
    ranked.sort_by(|(ka, a), (kb, b)| b[0].cmp(&a[0]).then(ka.cmp(kb)));
    let want: Rows = ranked
        .iter()
        .take(10)
        .map(|(k, v)| vec![s(&k.0), s(&k.1), s(v[0]), s(v[1]), s(v[2])])
        .collect();
    assert_eq!(rows(&rep, "pairs"), want);
    let top: BTreeSet<&(String, String)> = ranked.iter().take(5).map(|(k, _)| k).collect();
    let mut rate: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in ok(recs) {
        let k = (r.srcaddr.clone().unwrap(), r.dstaddr.clone().unwrap());
        if top.contains(&k) {
            *rate
                .entry((r.start - r.start % 60, format!("{} -> {}", k.0, k.1)))
                .or_default() += b(r);
        }
    }
    let want: Rows = rate
        .iter()
        .map(|((t, pair), bytes)| vec![s(when(*t)), s(pair), s(bytes * 8 / 60)])
        .collect();
    assert_eq!(rows(&rep, "pair_rate"), want);

    // CIDR to CIDR.
    let mut m: BTreeMap<(&str, &str), [i64; 3]> = BTreeMap::new();
    let mut sent: BTreeMap<&str, i64> = BTreeMap::new();
    let mut received: BTreeMap<&str, i64> = BTreeMap::new();
    for r in ok(recs) {
        let (sb, db) = (
            block(r.srcaddr.as_ref().unwrap()),
            block(r.dstaddr.as_ref().unwrap()),
        );
        let v = m.entry((sb, db)).or_default();
        v[0] += b(r);
        v[1] += p(r);
        v[2] += 1;
        *sent.entry(sb).or_default() += b(r);
        *received.entry(db).or_default() += b(r);
    }
    let mut want: Vec<_> = m.into_iter().collect();
    want.sort_by(|(ka, a), (kb, b)| b[0].cmp(&a[0]).then(ka.cmp(kb)));
    let want: Rows = want
        .iter()
        .map(|(k, v)| vec![s(k.0), s(k.1), s(v[0]), s(v[1]), s(v[2])])
        .collect();
    assert_eq!(rows(&rep, "cidr_matrix"), want);
    let blocks: BTreeSet<&str> = sent.keys().chain(received.keys()).copied().collect();
    let mut want: Vec<(&str, i64, i64)> = blocks
        .iter()
        .map(|k| {
            (
                *k,
                sent.get(k).copied().unwrap_or(0),
                received.get(k).copied().unwrap_or(0),
            )
        })
        .collect();
    want.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(b.0)));
    let want: Rows = want
        .iter()
        .map(|(k, a, b)| vec![s(k), s(a), s(b)])
        .collect();
    assert_eq!(rows(&rep, "cidr_totals"), want);
}

#[test]
fn html_page_is_self_contained_with_a_chart_per_panel() {
    let logs = logs("html");
    let mut e = engine(&logs, Tz::Europe__Berlin);
    let rep = report::build(&mut e, &ReportOptions::default(), 1_800_000_000).unwrap();
    let page = html::render(&rep);
    let charts = rep
        .sections
        .iter()
        .flat_map(|s| &s.panels)
        .filter(|p| p.spec.chart != report::Chart::None)
        .count();
    assert_eq!(page.matches("<svg class=\"chart").count(), charts);
    assert!(charts >= 10);
    for forbidden in ["<script", "<link", "<img", "<iframe", "@import", "url("] {
        assert!(!page.contains(forbidden), "{forbidden}");
    }
    // The only URL is the SVG namespace.
    assert_eq!(
        page.matches("http").count(),
        page.matches("http://www.w3.org/2000/svg").count()
    );
    for title in [
        "Overview",
        "Policy statistics",
        "Interface traffic",
        "Host to host",
        "CIDR to CIDR",
    ] {
        assert!(page.contains(&format!("<h2>{title}</h2>")), "{title}");
    }
    // Times in the zone: 09:10 UTC is 11:10 in Berlin in July.
    assert!(
        page.contains("records starting 2024-07-12 11:10:"),
        "header span in local time"
    );
    assert!(page.contains("CEST"));
    assert!(
        page.contains(">11:10<") || page.contains(">11:15<"),
        "axis labels in local time"
    );
    // Lines, bars and the matrix all drew something.
    assert!(page.contains("<polyline"));
    assert!(page.matches("class=\"bar\"").count() > 20);

    let mut term = Vec::new();
    report::write_terminal(&rep, &mut term).unwrap();
    let term = String::from_utf8(term).unwrap();
    for title in ["== Overview ==", "== CIDR to CIDR ==", "-- Top host pairs:"] {
        assert!(term.contains(title), "{title}");
    }
    assert!(term.contains("more rows in the HTML report"));
}

#[test]
fn report_over_no_records() {
    let dir = TempDir::new("report-empty");
    let mut e = flowlog_query::Engine::open(&flowlog_query::EngineOptions {
        logs: vec![dir.path().to_path_buf()],
        range: flowlog_query::TimeRange::ALL,
        tz: Tz::UTC,
        threads: None,
    })
    .unwrap();
    let rep = report::build(&mut e, &ReportOptions::default(), 0).unwrap();
    assert_eq!(rep.span, None);
    let page = html::render(&rep);
    assert!(page.contains("no data"));
    assert!(page.contains("no records"));
}
