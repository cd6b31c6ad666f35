//! `--metrics-address`: /readyz, /healthz and /metrics of a running agent, the
//! exposition parsed by the Python `prometheus_client` OpenMetrics parser (a real
//! Prometheus parser, not ours), values checked against what the agent printed and
//! what was sent.
use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use flowlog_tests::{
    known, require_root,
    scrape::{self, parse},
    Agent, Filter, Netns, Record, VethPair,
};

const PORT: u16 = 19464;

/// `GET path` on the agent's listener inside `ns`: (status, body).
fn get(ns: &str, path: &str) -> (u16, String) {
    scrape::get(ns, PORT, path)
}

/// A sample the exposition must hold.
fn sample(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key}; samples: {m:#?}"))
}

#[test]
fn metrics_match_the_records_and_the_traffic() {
    require_root();
    let a = Netns::new("met-a");
    let b = Netns::new("met-b");
    let v = VethPair::new(&a, &b, "met", 1);
    let sink = known::sink(&b, &v);
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "3s",
            "--metrics-address",
            &format!(":{PORT}"),
        ],
    );
    assert_eq!(get(a.name(), "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(get(a.name(), "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(a.name(), "/nothing").0, 404);

    known::send(&a, &v, &sink);
    let f = known::filter(&v);
    // Wait for the window holding the datagrams, then scrape well before the next one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.select(&agent.records()).is_empty() {
        assert!(Instant::now() < deadline, "no record of the datagrams");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let (status, body) = get(a.name(), "/metrics");
    let recs: Vec<Record> = agent.records();
    assert_eq!(status, 200);
    let m = parse(&body);

    let windows = recs
        .iter()
        .map(Record::end)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64;
    let bytes: usize = recs.iter().map(|r| r.raw.len() + 1).sum();
    let ok_packets: u64 = Filter::ok().select(&recs).iter().map(|r| r.packets()).sum();
    assert_eq!(
        sample(&m, r#"flowlog_records_total{sink="stdout"}"#),
        recs.len() as f64
    );
    assert_eq!(
        sample(&m, r#"flowlog_record_bytes_total{sink="stdout"}"#),
        bytes as f64
    );
    assert_eq!(sample(&m, "flowlog_windows_total{}"), windows);
    assert_eq!(
        sample(&m, "flowlog_drain_duration_seconds_count{}"),
        windows
    );
    assert_eq!(sample(&m, "flowlog_attached_interfaces{}"), 1.0);
    assert_eq!(sample(&m, "flowlog_active_flow_logs{}"), 1.0);
    assert_eq!(sample(&m, "flowlog_flow_map_capacity{}"), 65536.0);
    // One flow log with no state directory: no tick journal.
    for k in [
        "flowlog_skipped_streams_total{}",
        "flowlog_skipped_packets_total{}",
        "flowlog_skipped_bytes_total{}",
        "flowlog_tick_journal_bytes{}",
        "flowlog_tick_journal_errors_total{}",
    ] {
        assert_eq!(sample(&m, k), 0.0, "{k}");
    }
    // Every frame the programs saw is a packet of some record, or placed in no stream.
    let seen = sample(&m, r#"flowlog_datapath_events_total{event="seen"}"#);
    let unplaced = sample(&m, r#"flowlog_datapath_events_total{event="unplaced"}"#);
    assert!(ok_packets >= 12);
    assert_eq!(
        seen,
        ok_packets as f64 + unplaced,
        "seen = recorded packets + unplaced; records: {recs:#?}"
    );
    known::assert_exact(&recs, &v);
    agent.stop();
    sink.finish();
}

#[test]
fn bad_metrics_address_is_a_usage_error() {
    require_root();
    let a = Netns::new("met-bad");
    let out = flowlog_tests::run_to_exit(
        a.name(),
        &["run", "--interface", "lo", "--metrics-address", "localhost"],
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--metrics-address: \"localhost\" is not an address"),
        "{}",
        out.stderr
    );
}
