//! Delivery sinks end to end: the `parquet` sink read back by `flowlog query` and by
//! pyarrow against the JSON records of the same run, and the `tcp` sink through its
//! spool: a 30 s receiver outage, a SIGKILLed agent, a spool that overflows. Every
//! count is exact; records are told apart by `record-id` (`--record-format
//! extended`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowlog_tests::{
    agent::agent_bin,
    collector::Collector,
    known, require_root,
    scrape::{metrics, sample},
    traffic::{udp_send, v4, UdpSink},
    Agent, Filter, Netns, Record, VethPair,
};

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("flowlog-delivery-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// Sleeps until `at` (a fraction) into the current wall-clock window of `window`, or
/// of the next one if that point has passed: the agent writes to its sinks right
/// after a boundary, so mid-window nothing is in flight.
fn sleep_into_window(window: Duration, at: f64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let w = window.as_nanos();
    let into = now.as_nanos() % w;
    let target = (w as f64 * at) as u128;
    let wait = if into < target {
        target - into
    } else {
        w - into + target
    };
    thread::sleep(Duration::from_nanos(wait as u64));
}

fn ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.get("record-id").expect("extended records").to_string())
        .collect()
}

/// Asserts no id occurs twice; returns the set.
fn unique(ids: &[String], what: &str) -> BTreeSet<String> {
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "{what}: a record-id arrived twice");
    set
}

fn parse_lines(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .map(|l| Record::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The known burst's stream plus any other source port: all OK records of UDP
/// from A to B:5001.
fn udp_to_b(v: &VethPair) -> Filter {
    Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .dst(v.v4_b)
        .dport(known::DPORT)
}

fn sums(records: &[Record], f: &Filter) -> (u64, u64) {
    flowlog_tests::totals(f.select(records))
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let p = scratch(&format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

const COLLECTOR: &str = "127.0.0.1:9000";

fn tcp_config(name: &str, spool: &Path, extra: &str) -> PathBuf {
    write_config(
        name,
        &format!(
            "[[sink]]\nname = \"collector\"\ntype = \"tcp\"\naddress = \"{COLLECTOR}\"\nspool_dir = \"{}\"\n{extra}",
            spool.display()
        ),
    )
}

fn tcp_agent(ns: &str, v: &VethPair, window: &str, config: &Path) -> Agent {
    Agent::start(
        ns,
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            window,
            "--record-format",
            "extended",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "collector",
            "--output",
            "-",
            "--metrics-address",
            ":19470",
        ],
    )
}

const DELIVERED: &str = "flowlog_delivered_records_total{sink=\"collector\"}";
const DROPPED: &str = "flowlog_spool_dropped_records_total{sink=\"collector\"}";
const SPOOLED: &str = "flowlog_spool_records{sink=\"collector\"}";

/// Waits (at most 15 s: three times the longest retry delay) until the agent's
/// spool is empty.
fn wait_drained(ns: &str) {
    let mut m = metrics(ns, 19470);
    for _ in 0..150 {
        if sample(&m, SPOOLED) == 0.0 {
            return;
        }
        thread::sleep(Duration::from_millis(100));
        m = metrics(ns, 19470);
    }
    panic!("the spool did not drain: {m:?}");
}

/// The receiver is down for 30 s while traffic flows over 2 s windows; the records
/// wait in the spool and all arrive once it is back, each once, in the order they
/// were written.
#[test]
fn tcp_sink_survives_a_30s_receiver_outage() {
    require_root();
    let a = Netns::new("tcpo-a");
    let b = Netns::new("tcpo-b");
    let v = VethPair::new(&a, &b, "tco", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let spool = scratch("outage-spool");
    let config = tcp_config("outage", &spool, "");
    let addr: SocketAddr = COLLECTOR.parse().unwrap();
    let mut collector = Collector::start(a.name(), addr);
    let agent = tcp_agent(a.name(), &v, "2s", &config);
    let window = Duration::from_secs(2);

    // 400 datagrams over 40 s: before, during and after the outage.
    const N: u64 = 400;
    let sender = known::paced(&a, &v, N as usize, 100, Duration::from_secs(40));
    thread::sleep(Duration::from_secs(4));
    sleep_into_window(window, 0.5);
    let before = collector.lines().len();
    assert!(before > 0, "nothing delivered before the outage");
    collector.pause();
    thread::sleep(Duration::from_secs(30));
    sleep_into_window(window, 0.5);
    // Everything printed since the outage began waits in the spool.
    let printed = agent.records().len();
    let m = metrics(a.name(), 19470);
    assert_eq!(
        sample(&m, SPOOLED) as usize,
        printed - before,
        "spool depth after 30 s without the receiver"
    );
    assert!(sample(&m, "flowlog_spool_bytes{sink=\"collector\"}") > 0.0);
    assert_eq!(sample(&m, DROPPED), 0.0);
    collector.resume();
    assert_eq!(sender.join().unwrap() as u64, N);
    assert_eq!(udp.wait_for(N, Duration::from_secs(5)), N);
    // Let the last datagrams' window end, and the spool drain: the agent retries
    // with backoff (up to 5 s), so the first attempt after the restart may come a
    // few seconds later.
    thread::sleep(window);
    wait_drained(a.name());
    sleep_into_window(window, 0.5);
    let arrived = collector.lines().len();
    let m = metrics(a.name(), 19470);
    assert_eq!(sample(&m, SPOOLED), 0.0, "spool drained");
    assert_eq!(sample(&m, DELIVERED) as usize, arrived, "delivered metric");
    let stdout = agent.stop();
    let lines = collector.wait_for(stdout.len(), Duration::from_secs(10));
    let got = parse_lines(&lines);

    let sent = unique(&ids(&stdout), "stdout");
    let received = unique(&ids(&got), "collector");
    assert_eq!(
        received, sent,
        "the collector got exactly the printed records"
    );
    assert_eq!(
        ids(&got),
        ids(&stdout),
        "records arrive in the order they were written"
    );
    assert_eq!(sums(&stdout, &udp_to_b(&v)), (N, N * 128), "capture");
    assert_eq!(sums(&got, &udp_to_b(&v)), (N, N * 128), "delivered");
    assert_eq!(collector.cut_lines(), 0);
    assert!(
        collector.connections() >= 2,
        "the agent reconnected after the outage"
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&config);
}

/// Records waiting in the spool when the agent is SIGKILLed are delivered by the
/// next agent started on the same spool directory, before its own.
#[test]
fn tcp_spool_survives_sigkill() {
    require_root();
    let a = Netns::new("tcpk-a");
    let b = Netns::new("tcpk-b");
    let v = VethPair::new(&a, &b, "tck", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let spool = scratch("kill-spool");
    let config = tcp_config("kill", &spool, "");
    let addr: SocketAddr = COLLECTOR.parse().unwrap();
    let mut collector = Collector::stopped(a.name(), addr);
    let window = Duration::from_secs(2);

    let first = tcp_agent(a.name(), &v, "2s", &config);
    let src = v4(v.v4_a, known::SPORT);
    let dst = v4(v.v4_b, known::DPORT);
    assert_eq!(
        udp_send(a.name(), src, dst, &[100; 30], Some(Duration::from_secs(5))),
        30
    );
    assert_eq!(udp.wait_for(30, Duration::from_secs(5)), 30);
    // Past the end of the window of the last datagram, in the middle of the next.
    thread::sleep(window);
    sleep_into_window(window, 0.5);
    let killed = first.kill();
    assert_eq!(
        sums(&killed, &udp_to_b(&v)),
        (30, 30 * 128),
        "first run's capture"
    );
    let segments = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".spool")
        })
        .count();
    assert!(segments > 0, "nothing left in the spool");

    collector.resume();
    let second = tcp_agent(a.name(), &v, "2s", &config);
    assert_eq!(
        udp_send(a.name(), src, dst, &[100; 20], Some(Duration::from_secs(2))),
        20
    );
    assert_eq!(udp.wait_for(50, Duration::from_secs(5)), 50);
    thread::sleep(window);
    sleep_into_window(window, 0.5);
    let stdout2 = second.stop();
    let all: Vec<Record> = killed.iter().chain(&stdout2).cloned().collect();
    let lines = collector.wait_for(all.len(), Duration::from_secs(10));
    let got = parse_lines(&lines);
    let received = unique(&ids(&got), "collector");
    assert_eq!(
        received,
        unique(&ids(&all), "stdout of both runs"),
        "every record of both runs arrived, once"
    );
    // The killed run's records first.
    assert_eq!(ids(&got)[..killed.len()], ids(&killed)[..]);
    assert_eq!(sums(&got, &udp_to_b(&v)), (50, 50 * 128));
    assert_eq!(collector.cut_lines(), 0);
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&config);
}

/// A 4000-byte spool with the receiver down: the oldest records go; the dropped
/// count in the metric and in the log lines equals the records that never arrived.
#[test]
fn tcp_spool_overflow_drops_are_counted_exactly() {
    require_root();
    let a = Netns::new("tcpf-a");
    let b = Netns::new("tcpf-b");
    let v = VethPair::new(&a, &b, "tcf", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let spool = scratch("full-spool");
    let config = tcp_config("full", &spool, "spool_max_bytes = 4000\n");
    let addr: SocketAddr = COLLECTOR.parse().unwrap();
    let mut collector = Collector::stopped(a.name(), addr);
    let agent = tcp_agent(a.name(), &v, "1s", &config);
    // 8 rounds of 5 streams, a round per second: about 40 records of ~470 bytes.
    for _ in 0..8 {
        for p in 0..5 {
            udp_send(
                a.name(),
                v4(v.v4_a, 41000 + p),
                v4(v.v4_b, known::DPORT),
                &[20],
                None,
            );
        }
        thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(udp.wait_for(40, Duration::from_secs(5)), 40);
    let window = Duration::from_secs(1);
    sleep_into_window(window, 0.5);
    let m = metrics(a.name(), 19470);
    assert!(
        sample(&m, DROPPED) > 0.0,
        "the spool never overflowed: {m:?}"
    );
    assert!(sample(&m, "flowlog_spool_bytes{sink=\"collector\"}") <= 4000.0);
    collector.resume();
    wait_drained(a.name());
    sleep_into_window(window, 0.5);
    let dropped = sample(&metrics(a.name(), 19470), DROPPED) as usize;
    let stderr_before = agent.stderr();
    let stdout = agent.stop();
    let lines = collector.wait_for(stdout.len() - dropped, Duration::from_secs(10));
    let got = parse_lines(&lines);
    let received = unique(&ids(&got), "collector");
    let printed = unique(&ids(&stdout), "stdout");
    assert!(received.is_subset(&printed));
    assert_eq!(
        printed.len() - received.len(),
        dropped,
        "records that never arrived = the dropped metric"
    );
    // The log lines name the sink and the count.
    let logged: usize = stderr_before
        .lines()
        .filter(|l| l.contains("spool full") && l.contains("collector"))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("dropped_records="))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no count in {l}"))
        })
        .sum();
    assert_eq!(logged, dropped, "dropped records in the log lines");
    // Oldest first: what arrived is the newest part, in order.
    let got_ids = ids(&got);
    let all_ids = ids(&stdout);
    let first = all_ids.iter().position(|i| *i == got_ids[0]).unwrap();
    assert_eq!(
        got_ids[..],
        all_ids[first..first + got_ids.len()],
        "the records that arrived are one contiguous, newest run"
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&config);
}

/// The query binary: `$FLOWLOG_QUERY_BIN`, else `flowlog-query` next to the agent.
fn query_bin() -> PathBuf {
    let p = std::env::var_os("FLOWLOG_QUERY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| agent_bin().with_file_name("flowlog-query"));
    assert!(
        p.is_file(),
        "{} not found: cargo build -p flowlog-query (cargo xtask test builds it), or set FLOWLOG_QUERY_BIN",
        p.display()
    );
    p
}

fn query(logs: &[&Path], q: &str) -> String {
    let mut cmd = Command::new(query_bin());
    cmd.arg("query");
    for l in logs {
        cmd.arg("--logs").arg(l);
    }
    let out = cmd.args(["--format", "csv", q]).output().unwrap();
    assert!(
        out.status.success(),
        "flowlog-query {q}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// A `file` sink and a `parquet` sink of the same run: the Parquet tree (Hive
/// partitions, no temporary file left) gives the same answers as the JSON files in
/// `flowlog query`, and pyarrow reads it with typed columns whose sums match.
#[test]
fn parquet_sink_matches_the_json_records() {
    require_root();
    let a = Netns::new("pq-a");
    let b = Netns::new("pq-b");
    let v = VethPair::new(&a, &b, "pqs", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let json_dir = scratch("pq-json");
    let pq_dir = scratch("pq-tree");
    let config = write_config(
        "pq",
        &format!(
            "[[sink]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\n\n\
             [[sink]]\nname = \"lake\"\ntype = \"parquet\"\npath = \"{}\"\nwindows_per_file = 2\n",
            json_dir.display(),
            pq_dir.display()
        ),
    );
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "1s",
            "--record-format",
            "extended",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "archive",
            "--sink",
            "lake",
        ],
    );
    known::send(&a, &v, &udp);
    // 20 streams x 10 rounds over ~4 s.
    for _ in 0..10 {
        for p in 0..20 {
            udp_send(
                a.name(),
                v4(v.v4_a, 41000 + p),
                v4(v.v4_b, known::DPORT),
                &[20],
                None,
            );
        }
        thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(udp.wait_for(212, Duration::from_secs(5)), 212);
    let stdout = agent.stop();
    assert!(stdout.is_empty());

    let json_files = tree(&json_dir);
    let records: Vec<Record> = json_files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(json_dir.join(f))
                .unwrap()
                .lines()
                .map(|l| Record::parse(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    known::assert_exact(&records, &v);
    assert_eq!(
        sums(&records, &udp_to_b(&v)),
        (212, known::BYTES + 200 * 48)
    );

    let files = tree(&pq_dir);
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let parts: Vec<&str> = f.split('/').collect();
        assert_eq!(parts.len(), 3, "{f}");
        assert!(parts[0].starts_with("dt=") && parts[0].len() == 13, "{f}");
        assert!(parts[1].starts_with("hour=") && parts[1].len() == 7, "{f}");
        assert!(
            parts[2].starts_with("flows-") && parts[2].ends_with(".parquet"),
            "{f}"
        );
    }

    // flowlog query: the same answers over either form.
    let queries = [
        "* | SELECT count(*) AS n, sum(packets) AS p, sum(bytes) AS b, count(srcaddr) AS s, min(start) AS t0, max(\"end\") AS t1 FROM log",
        "* | SELECT srcport, dstport, protocol, sum(packets) AS p, sum(bytes) AS b, bit_or(\"tcp-flags\") AS f FROM log GROUP BY srcport, dstport, protocol ORDER BY srcport, dstport, protocol",
        "* | SELECT \"log-status\", \"eni-id\", \"rule-id\", \"account-id\", srcaddr, \"type\", count(*) AS n FROM log GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6",
        "srcport: 40000 | SELECT sum(packets) AS p, sum(bytes) AS b FROM log",
        "srcport: - | SELECT \"log-status\", count(*) AS n FROM log GROUP BY 1 ORDER BY 1",
        "dstport: 50* and packets >= 10 | SELECT srcport, packets FROM log ORDER BY srcport",
    ];
    for q in queries {
        let over_json = query(&[&json_dir], q);
        let over_parquet = query(&[&pq_dir], q);
        assert_eq!(over_parquet, over_json, "{q}");
    }
    let totals = query(
        &[&pq_dir],
        "* | SELECT sum(packets) AS p, sum(bytes) AS b, count(*) AS n FROM log",
    );
    let all_packets: u64 = records
        .iter()
        .filter(|r| r.status() == "OK")
        .map(|r| r.packets())
        .sum();
    let all_bytes: u64 = records
        .iter()
        .filter(|r| r.status() == "OK")
        .map(|r| r.bytes())
        .sum();
    assert_eq!(
        totals,
        format!("p,b,n\n{all_packets},{all_bytes},{}\n", records.len())
    );
    // Both trees at once: every record twice.
    let both = query(&[&json_dir, &pq_dir], "* | SELECT count(*) AS n FROM log");
    assert_eq!(both, format!("n\n{}\n", 2 * records.len()));

    // pyarrow, an independent reader: Hive partitions, typed columns, same sums.
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.dataset as ds, pyarrow.compute as pc
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
ok = t.filter(pc.equal(t["log-status"], "OK"))
print(json.dumps({
    "rows": t.num_rows,
    "packets": pc.sum(ok["packets"]).as_py(),
    "bytes": pc.sum(ok["bytes"]).as_py(),
    "types": {f: str(t.schema.field(f).type) for f in ["packets", "bytes", "start", "srcport", "protocol", "srcaddr", "record-id", "dt", "hour"]},
    "ids": sorted(t["record-id"].to_pylist()),
    "null_ports": t.filter(pc.equal(t["log-status"], "NODATA"))["srcport"].null_count,
    "nodata": t.filter(pc.equal(t["log-status"], "NODATA")).num_rows,
}))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&pq_dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow (bash .ci/setup --tests installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["rows"], records.len());
    assert_eq!(got["packets"], all_packets);
    assert_eq!(got["bytes"], all_bytes);
    let types: BTreeMap<String, String> = serde_json::from_value(got["types"].clone()).unwrap();
    assert_eq!(types["packets"], "int64");
    assert_eq!(types["bytes"], "int64");
    assert_eq!(types["start"], "int64");
    assert_eq!(types["srcport"], "int32");
    assert_eq!(types["protocol"], "int32");
    assert_eq!(types["srcaddr"], "string");
    assert_eq!(types["record-id"], "string");
    let mut json_ids = ids(&records);
    json_ids.sort();
    let pq_ids: Vec<String> = serde_json::from_value(got["ids"].clone()).unwrap();
    assert_eq!(pq_ids, json_ids, "the same records");
    let nodata = records.iter().filter(|r| r.status() == "NODATA").count();
    assert_eq!(got["nodata"], nodata);
    assert_eq!(got["null_ports"], nodata, "`-` is NULL in integer columns");

    let _ = std::fs::remove_dir_all(&json_dir);
    let _ = std::fs::remove_dir_all(&pq_dir);
    let _ = std::fs::remove_file(&config);
}
