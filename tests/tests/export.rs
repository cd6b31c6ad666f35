//! The `ipfix` and `kafka` sinks against real collectors.
//!
//! * IPFIX: Debian's `nfcapd` (nfdump 1.7, which listens on UDP only) receives the
//!   records of known traffic (UDP over IPv4 and IPv6, a TCP connection, ICMP), and
//!   `nfdump -o json` must show exactly the agent's stdout records (addresses, ports,
//!   protocol, packets, bytes, flags, direction, forwarding status, times). Over UDP
//!   the agent sends to nfcapd, which repeats every datagram (`-R`) to a tap; over
//!   TCP the agent sends to the tap (`tests/py/ipfix_tap.py`, an IPFIX-over-TCP
//!   collector), which forwards each message as one datagram to nfcapd. Either way
//!   the tap's copy is decoded by Python code written from RFC 7011 (not the agent's
//!   encoder), which checks what nfdump ignores: the enterprise elements, the
//!   sequence numbers, the message sizes.
//! * Outage: the TCP collector is down for 30 s under traffic; afterwards every
//!   record arrived exactly once (record-id), in order.
//! * Kafka: see `kafka_*` (a `tansu` broker, consumed with kafka-python).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowlog_tests::{
    known, require_root,
    scrape::{metrics, sample},
    traffic::{tcp_send, udp_send, v4, v6, TcpSink, UdpSink},
    Agent, Filter, Netns, Record, VethPair,
};
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("flowlog-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script)
}

/// A child process in a namespace, killed on drop.
struct Proc(Option<Child>);

impl Proc {
    /// Starts `args` in `ns`; with `ready`, waits for that line on its stdout.
    fn start(ns: &str, args: &[&str], ready: Option<&str>) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.stdout(if ready.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
        if let Some(want) = ready {
            let out = child.stdout.take().unwrap();
            let mut lines = BufReader::new(out).lines();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains(want) => break,
                    Some(Ok(_)) => continue,
                    _ => panic!("{args:?} exited before printing {want:?}"),
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            thread::spawn(move || for _ in lines {});
        }
        Proc(Some(child))
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(c) = self.0.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
            let mut c = c;
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Waits until something listens on the UDP or TCP port in `ns`.
fn wait_port(ns: &str, proto: &str, port: u16) {
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hln", proto])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {proto} port {port} in {ns}");
}

fn decode(tap_file: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(py("ipfix_tap.py"))
        .arg("decode")
        .arg(tap_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decoder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn nfdump(dir: &Path) -> Vec<Value> {
    let out = Command::new("nfdump")
        .args(["-R"])
        .arg(dir)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("nfdump json: {e}\n{text}"))
        .as_array()
        .unwrap()
        .clone()
}

/// A flow as both sides describe it.
type Flow = (
    String, // src
    String, // dst
    u64,    // sport
    u64,    // dport
    u64,    // protocol
    u64,    // packets
    u64,    // bytes
    u64,    // tcp flags
    u64,    // direction (0 in, 1 out)
    u64,    // forwarding status
    u64,    // start
    u64,    // end
);

fn port_of(r: &Record, f: &str) -> u64 {
    match r.field(f) {
        "-" => 0,
        v => v.parse().unwrap(),
    }
}

fn flow_of_record(r: &Record) -> Flow {
    (
        r.field("srcaddr").to_string(),
        r.field("dstaddr").to_string(),
        port_of(r, "srcport"),
        port_of(r, "dstport"),
        r.protocol(),
        r.packets(),
        r.bytes(),
        r.tcp_flags(),
        (r.direction() == "out") as u64,
        if r.action() == "ACCEPT" { 64 } else { 130 },
        r.start(),
        r.end(),
    )
}

/// A number nfdump leaves out where it does not apply (ports of ICMP): 0.
fn u_or_0(v: &Value, k: &str) -> u64 {
    if v.get(k).is_none() {
        0
    } else {
        u(v, k)
    }
}

fn u(v: &Value, k: &str) -> u64 {
    match &v[k] {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{k}: {s}")),
        other => panic!("{k}: {other} in {v}"),
    }
}

/// nfdump's `"first": "2026-12-02T11:40:00.000"` (local time = UTC here).
fn nf_time(v: &Value, k: &str) -> u64 {
    let s = v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"));
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{}Z", s.split('.').next().unwrap()),
            "+%s",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// nfdump's tcp flags string (`"...A..S."` style) or number.
fn nf_flags(v: &Value) -> u64 {
    match &v["tcp_flags"] {
        Value::Null => 0, // not TCP
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => {
            let s = s.as_bytes();
            // nfdump prints C E U A P R S F from bit 7 down to bit 0, '.' when clear.
            let mut f = 0;
            for (i, &c) in s.iter().rev().enumerate() {
                if c != b'.' {
                    f |= 1 << i;
                }
            }
            f
        }
        other => panic!("tcp_flags {other}"),
    }
}

fn flow_of_nfdump(v: &Value) -> Flow {
    let (src, dst) = if v.get("src4_addr").is_some() {
        ("src4_addr", "dst4_addr")
    } else {
        ("src6_addr", "dst6_addr")
    };
    (
        v[src].as_str().unwrap().to_string(),
        v[dst].as_str().unwrap().to_string(),
        u_or_0(v, "src_port"),
        u_or_0(v, "dst_port"),
        u(v, "proto"),
        u(v, "in_packets"),
        u(v, "in_bytes"),
        nf_flags(v),
        u(v, "direction"),
        // nfdump 1.7.1 does not read forwardingStatus from IPFIX (fwd_status is 0
        // whatever was sent): the independent decoder checks it instead.
        0,
        nf_time(v, "first"),
        nf_time(v, "last"),
    )
}

fn flow_of_decoded(r: &Value) -> Flow {
    let (src, dst) = if r.get("sourceIPv4Address").is_some() {
        ("sourceIPv4Address", "destinationIPv4Address")
    } else {
        ("sourceIPv6Address", "destinationIPv6Address")
    };
    (
        r[src].as_str().unwrap().to_string(),
        r[dst].as_str().unwrap().to_string(),
        u(r, "sourceTransportPort"),
        u(r, "destinationTransportPort"),
        u(r, "protocolIdentifier"),
        u(r, "packetDeltaCount"),
        u(r, "octetDeltaCount"),
        u(r, "tcpControlBits"),
        u(r, "flowDirection"),
        u(r, "forwardingStatus"),
        u(r, "flowStartSeconds"),
        u(r, "flowEndSeconds"),
    )
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let p = scratch(&format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn agent(ns: &str, iface: &str, config: &Path, sink: &str, metrics_port: u16) -> Agent {
    Agent::start(
        ns,
        &[
            "run",
            "--interface",
            iface,
            "--window",
            "2s",
            "--record-format",
            "extended",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            sink,
            "--output",
            "-",
            "--metrics-address",
            &format!(":{metrics_port}"),
        ],
    )
}

/// Known traffic from A: the UDP burst over IPv4, three datagrams over IPv6, a TCP
/// connection.
fn traffic(a: &Netns, b: &Netns, v: &VethPair) {
    let udp4 = known::sink(b, v);
    let udp6 = UdpSink::bind(b.name(), v6(v.v6b(), 5002));
    let tcp = TcpSink::bind(b.name(), v4(v.v4_b, 5003));
    known::send(a, v, &udp4);
    assert_eq!(
        udp_send(
            a.name(),
            v6(v.v6a(), 40001),
            v6(v.v6b(), 5002),
            &[10, 20, 30],
            None
        ),
        3
    );
    assert_eq!(udp6.wait_for(3, Duration::from_secs(5)), 3);
    tcp_send(a.name(), v4(v.v4_b, 5003), 100_000);
    assert_eq!(tcp.finish(), 100_000);
}

/// The records of the agent's stdout and of one IPFIX run, checked against each other.
fn check_ipfix(stdout: &[Record], decoded: &[Value], nf: &[Value], mtu: usize) {
    let ok: Vec<&Record> = stdout.iter().filter(|r| r.status() == "OK").collect();
    assert!(ok.len() >= 6, "too few records: {stdout:?}");
    // nfdump: every OK record, exactly.
    let want = sorted(ok.iter().map(|r| flow_of_record(r)).collect::<Vec<_>>());
    let no_fwd = |mut f: Flow| {
        f.9 = 0;
        f
    };
    let got = sorted(nf.iter().map(flow_of_nfdump).collect());
    assert_eq!(
        got,
        sorted(want.iter().cloned().map(no_fwd).collect()),
        "nfdump -o json against stdout"
    );
    assert!(
        want.iter().any(|f| f.4 == 6 && f.7 != 0),
        "a TCP flow with flags"
    );
    assert!(want.iter().any(|f| f.0.contains(':')), "an IPv6 flow");

    // The independent decoder: everything, with the enterprise elements.
    let records: Vec<&Value> = decoded
        .iter()
        .flat_map(|m| m["records"].as_array().unwrap())
        .collect();
    let flows: Vec<&&Value> = records
        .iter()
        .filter(|r| u(r, "template") == 256 || u(r, "template") == 257)
        .collect();
    assert_eq!(
        sorted(flows.iter().map(|r| flow_of_decoded(r)).collect()),
        want,
        "decoded flow records against stdout"
    );
    let by_id: BTreeMap<String, &&Value> = flows
        .iter()
        .map(|r| (format!("{:016x}", u(r, "record-id")), *r))
        .collect();
    assert_eq!(by_id.len(), flows.len(), "a record-id twice");
    for r in &ok {
        let d = by_id[r.field("record-id")];
        for f in [
            "eni-id",
            "vm-id",
            "vswitch-id",
            "vpc-id",
            "account-id",
            "log-status",
        ] {
            assert_eq!(d[f].as_str().unwrap(), r.field(f), "{f}");
        }
        assert_eq!(d["interfaceName"].as_str().unwrap(), r.field("eni-id"));
        let path = match r.field("traffic_path") {
            "-" => 255,
            p => p.parse().unwrap(),
        };
        assert_eq!(u(d, "traffic_path"), path);
    }
    // NODATA records arrive as template 258.
    let nodata: BTreeSet<String> = stdout
        .iter()
        .filter(|r| r.status() == "NODATA")
        .map(|r| r.field("record-id").to_string())
        .collect();
    let got_nodata: BTreeSet<String> = records
        .iter()
        .filter(|r| u(r, "template") == 258)
        .map(|r| format!("{:016x}", u(r, "record-id")))
        .collect();
    assert_eq!(got_nodata, nodata, "NODATA records");
    // Messages: under the MTU; sequence numbers count the data records before them.
    let mut seq = None::<u64>;
    for m in decoded {
        assert!(u(m, "length") <= (mtu - 48) as u64, "{}", m["length"]);
        assert_eq!(u(m, "domain"), 7);
        let n = m["records"].as_array().unwrap().len() as u64;
        if let Some(s) = seq {
            assert_eq!(u(m, "sequence"), s, "sequence number");
        }
        seq = Some(u(m, "sequence") + n);
    }
    assert!(decoded[0]["templates"].as_array().unwrap().len() == 4);
}

fn ipfix_run(transport: &str) {
    require_root();
    let tag = &transport[..1];
    let a = Netns::new(&format!("ipx{tag}-a"));
    let b = Netns::new(&format!("ipx{tag}-b"));
    let v = VethPair::dual_stack(&a, &b, &format!("ix{tag}"), 1);
    let dir = scratch(&format!("nfcapd-{transport}"));
    std::fs::create_dir_all(&dir).unwrap();
    let tap_file = scratch(&format!("tap-{transport}.ipfix"));
    let spool = scratch(&format!("spool-{transport}"));
    let nf_dir = dir.to_str().unwrap();
    let tap_path = tap_file.to_str().unwrap();
    let nf_log = scratch(&format!("nfcapd-{transport}.log"));
    // nfcapd's log (its totals when it stops) goes to a file.
    let nfcapd_cmd = |extra: &str| {
        format!(
            "exec nfcapd -w {nf_dir} -b 127.0.0.1 -p 2055 -t 3600 {extra} >{} 2>&1",
            nf_log.display()
        )
    };
    let (nfcapd, _tap, sink_port) = if transport == "udp" {
        let tap = Proc::start(
            a.name(),
            &[
                "python3",
                py("ipfix_tap.py").to_str().unwrap(),
                "udp",
                "2056",
                tap_path,
            ],
            Some("ready"),
        );
        let nfcapd = Proc::start(
            a.name(),
            &["sh", "-c", &nfcapd_cmd("-R 127.0.0.1/2056")],
            None,
        );
        (nfcapd, tap, 2055)
    } else {
        let nfcapd = Proc::start(a.name(), &["sh", "-c", &nfcapd_cmd("")], None);
        let tap = Proc::start(
            a.name(),
            &[
                "python3",
                py("ipfix_tap.py").to_str().unwrap(),
                "tcp",
                "4739",
                tap_path,
                "2055",
            ],
            Some("ready"),
        );
        (nfcapd, tap, 4739)
    };
    let mut nfcapd = nfcapd;
    wait_port(a.name(), "-u", 2055);
    let config = write_config(
        &format!("ipfix-{transport}"),
        &format!(
            "[[sink]]\nname = \"nf\"\ntype = \"ipfix\"\naddress = \"127.0.0.1:{sink_port}\"\ntransport = \"{transport}\"\nobservation_domain = 7\nmtu = 1280\nspool_dir = \"{}\"\n",
            spool.display()
        ),
    );
    let ag = agent(a.name(), &v.if_a, &config, "nf", 19481);
    traffic(&a, &b, &v);
    // Two windows: the traffic's records are out, then an empty window (NODATA).
    thread::sleep(Duration::from_secs(5));
    let stdout = ag.stop();
    // Let nfcapd receive the last datagrams, then stop it: it closes its file.
    thread::sleep(Duration::from_millis(500));
    nfcapd.signal(libc::SIGTERM);
    let decoded = decode(&tap_file);
    let nf = nfdump(&dir);
    check_ipfix(&stdout, &decoded, &nf, 1280);
    let sent = stdout.iter().filter(|r| r.status() != "SKIPDATA").count();
    let records: usize = decoded
        .iter()
        .map(|m| m["records"].as_array().unwrap().len())
        .sum();
    assert_eq!(records, sent, "every record in one IPFIX data record");
    // nfcapd's own account when it stops: every flow. Its sequence check counts only
    // the records it stores as flows, while RFC 7011's sequence number counts every
    // data record (the decoder checks that above): so nfcapd reports one "sequence
    // error" after each message that held a NODATA record, and no other.
    let log = std::fs::read_to_string(&nf_log).unwrap();
    let flows = stdout.iter().filter(|r| r.status() == "OK").count();
    let with_nodata = decoded[..decoded.len() - 1]
        .iter()
        .filter(|m| {
            m["records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| u(r, "template") == 258)
        })
        .count();
    assert!(
        log.contains(&format!("Flows: {flows},"))
            && log.contains(&format!("Sequence Errors: {with_nodata},")),
        "nfcapd (expected {with_nodata} sequence errors): {log}"
    );
    eprintln!(
        "ipfix over {transport}: {} messages, {sent} records ({flows} flows); nfdump shows {} flows; {with_nodata} nfcapd sequence errors",
        decoded.len(),
        nf.len()
    );
    let _ = std::fs::remove_file(&nf_log);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&tap_file);
    let _ = std::fs::remove_file(&config);
}

#[test]
fn ipfix_over_udp_to_nfcapd() {
    ipfix_run("udp");
}

#[test]
fn ipfix_over_tcp_to_nfcapd() {
    ipfix_run("tcp");
}

/// Sleeps until `at` (a fraction) into the current 2 s window.
fn into_window(at: f64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let w = 2_000_000_000u128;
    let into = now.as_nanos() % w;
    let target = (w as f64 * at) as u128;
    let wait = if into < target {
        target - into
    } else {
        w - into + target
    };
    thread::sleep(Duration::from_nanos(wait as u64));
}

fn wait_drained(ns: &str, port: u16, sink: &str) {
    let key = format!("flowlog_spool_records{{sink=\"{sink}\"}}");
    for _ in 0..300 {
        if sample(&metrics(ns, port), &key) == 0.0 {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("the spool of {sink} did not drain");
}

fn udp_to_b(v: &VethPair) -> Filter {
    Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .dst(v.v4_b)
        .dport(known::DPORT)
}

/// The TCP collector is killed for 30 s while traffic flows over 2 s windows, then
/// started again: every record arrives, each once, in order.
#[test]
fn ipfix_tcp_collector_outage() {
    require_root();
    let a = Netns::new("ipxo-a");
    let b = Netns::new("ipxo-b");
    let v = VethPair::new(&a, &b, "ixo", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let tap_file = scratch("outage-tap.ipfix");
    let spool = scratch("outage-spool");
    let tap_args = [
        "python3",
        py("ipfix_tap.py").to_str().unwrap(),
        "tcp",
        "4739",
        tap_file.to_str().unwrap(),
    ]
    .map(str::to_string);
    let tap_args: Vec<&str> = tap_args.iter().map(String::as_str).collect();
    let mut tap = Proc::start(a.name(), &tap_args, Some("ready"));
    let config = write_config(
        "ipfix-outage",
        &format!(
            "[[sink]]\nname = \"nf\"\ntype = \"ipfix\"\naddress = \"127.0.0.1:4739\"\ntransport = \"tcp\"\nobservation_domain = 7\nspool_dir = \"{}\"\n",
            spool.display()
        ),
    );
    let ag = agent(a.name(), &v.if_a, &config, "nf", 19482);
    const N: u64 = 400;
    let sender = known::paced(&a, &v, N as usize, 100, Duration::from_secs(40));
    thread::sleep(Duration::from_secs(4));
    into_window(0.5);
    tap.signal(libc::SIGKILL);
    let printed_before = ag.records().len();
    thread::sleep(Duration::from_secs(30));
    into_window(0.5);
    let m = metrics(a.name(), 19482);
    let waiting = sample(&m, "flowlog_spool_records{sink=\"nf\"}") as usize;
    assert_eq!(
        waiting,
        ag.records().len() - printed_before,
        "everything printed during the outage waits in the spool"
    );
    let _tap = Proc::start(a.name(), &tap_args, Some("ready"));
    assert_eq!(sender.join().unwrap() as u64, N);
    assert_eq!(udp.wait_for(N, Duration::from_secs(5)), N);
    thread::sleep(Duration::from_secs(2));
    wait_drained(a.name(), 19482, "nf");
    into_window(0.5);
    let m = metrics(a.name(), 19482);
    // The spool is empty: everything printed so far was delivered.
    let printed = ag.records().len();
    let stdout = ag.stop();
    thread::sleep(Duration::from_millis(500));
    let decoded = decode(&tap_file);
    let ids: Vec<String> = decoded
        .iter()
        .flat_map(|m| m["records"].as_array().unwrap())
        .map(|r| format!("{:016x}", u(r, "record-id")))
        .collect();
    let want: Vec<String> = stdout
        .iter()
        .filter(|r| r.status() != "SKIPDATA")
        .map(|r| r.field("record-id").to_string())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a record arrived twice"
    );
    assert_eq!(ids, want, "every record, once, in order");
    assert_eq!(
        sample(&m, "flowlog_delivered_records_total{sink=\"nf\"}") as usize,
        printed,
        "delivered metric"
    );
    eprintln!(
        "ipfix tcp outage: {} records printed, {} arrived ({} waited in the spool during the outage), {} IPFIX messages",
        stdout.len(),
        ids.len(),
        waiting,
        decoded.len()
    );
    assert_eq!(
        sample(&m, "flowlog_spool_dropped_records_total{sink=\"nf\"}"),
        0.0
    );
    assert_eq!(
        flowlog_tests::totals(udp_to_b(&v).select(&stdout)),
        (N, N * 128),
        "capture"
    );
    let got: Vec<Record> = decoded
        .iter()
        .flat_map(|m| m["records"].as_array().unwrap().clone())
        .filter(|r| u(r, "template") == 256)
        .map(|r| {
            let f = flow_of_decoded(&r);
            Record::parse(
                &serde_json::json!({
                    "log-status": "OK", "direction": if f.8 == 1 { "out" } else { "in" },
                    "protocol": f.4.to_string(), "srcaddr": f.0, "dstaddr": f.1,
                    "dstport": f.3.to_string(), "packets": f.5.to_string(),
                    "bytes": f.6.to_string(),
                })
                .to_string(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(
        flowlog_tests::totals(udp_to_b(&v).select(&got)),
        (N, N * 128),
        "delivered"
    );
    let sessions = decoded
        .iter()
        .filter(|m| !m["templates"].as_array().unwrap().is_empty())
        .count();
    assert!(sessions >= 2, "templates again on the new connection");
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&tap_file);
    let _ = std::fs::remove_file(&config);
}

/// The tansu broker: `$TANSU_BIN`, else `tansu` on the PATH, else `/opt/tansu/bin/tansu`
/// (where `.ci/setup --tests` installs it).
fn tansu_bin() -> String {
    if let Ok(b) = std::env::var("TANSU_BIN") {
        return b;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("tansu");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    let p = "/opt/tansu/bin/tansu";
    assert!(
        Path::new(p).is_file(),
        "no tansu broker (set TANSU_BIN or run bash .ci/setup --tests)"
    );
    p.to_string()
}

const BROKER: &str = "127.0.0.1:9092";

/// A tansu broker on [`BROKER`] in `ns`, with in-memory storage (it starts empty).
fn broker(ns: &str) -> Proc {
    let url = format!("tcp://{BROKER}");
    let bin = tansu_bin();
    let p = Proc::start(
        ns,
        &[
            &bin,
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ],
        None,
    );
    wait_port(ns, "-t", 9092);
    p
}

fn kafka_tool(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .arg(py("kafka_tool.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka_tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A consumed message: (partition, offset, key, value).
type Message = (i64, i64, String, String);

/// Every message of `topic`, reading on until `quiet` seconds passed without one.
fn consume(ns: &str, topic: &str, quiet: &str) -> Vec<Message> {
    let v: Value =
        serde_json::from_str(&kafka_tool(ns, &["consume", BROKER, topic, quiet])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["partition"].as_i64().unwrap(),
                m["offset"].as_i64().unwrap(),
                m["key"].as_str().unwrap().to_string(),
                m["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn kafka_agent(ns: &str, ifaces: &[&str], sinks: &[&str], config: &Path, port: u16) -> Agent {
    let mut args = vec!["run"];
    for i in ifaces {
        args.extend(["--interface", i]);
    }
    for s in sinks {
        args.extend(["--sink", s]);
    }
    let port = format!(":{port}");
    args.extend([
        "--window",
        "2s",
        "--record-format",
        "extended",
        "--config",
        config.to_str().unwrap(),
        "--output",
        "-",
        "--metrics-address",
        &port,
    ]);
    Agent::start(ns, &args)
}

/// The records the agent delivered: stdout's, less those still in the spool after
/// the stop (the stop's last window gets 2 s to go out; what does not, waits for the
/// next start), which must be the last ones printed.
fn delivered_part<'a>(stdout: &'a [Record], spool: &Path) -> &'a [Record] {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?;
            let seq = n
                .strip_prefix("seg-")?
                .strip_suffix(".spool")?
                .parse()
                .ok()?;
            Some((seq, p))
        })
        .collect();
    segs.sort();
    let (done_seq, done_off) = std::fs::read_to_string(spool.join("offset"))
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u64>().unwrap());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((0, 0));
    let mut pending: Vec<String> = Vec::new();
    for (seq, p) in segs {
        let data = std::fs::read(&p).unwrap();
        let from = match seq.cmp(&done_seq) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => done_off as usize,
            std::cmp::Ordering::Greater => 0,
        };
        pending.extend(
            String::from_utf8_lossy(&data[from..])
                .lines()
                .map(|l| Record::parse(l).unwrap().field("record-id").to_string()),
        );
    }
    let cut = stdout.len() - pending.len();
    let tail: Vec<String> = stdout[cut..]
        .iter()
        .map(|r| r.field("record-id").to_string())
        .collect();
    assert_eq!(tail, pending, "the spool keeps the last records printed");
    if !pending.is_empty() {
        eprintln!(
            "{} record(s) of the stop's last window wait in the spool for the next start",
            pending.len()
        );
    }
    &stdout[..cut]
}

/// Checks consumed messages against the records stdout got: each record once, its
/// value the record's JSON line, keyed by its eni-id, one partition per key, and
/// per key in the order stdout has them.
fn check_messages(msgs: &[Message], stdout: &[Record]) {
    let want: Vec<&Record> = stdout.iter().filter(|r| r.status() != "SKIPDATA").collect();
    let mut ids = BTreeSet::new();
    let mut partition_of: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for (p, off, key, value) in msgs {
        let r = Record::parse(value).unwrap();
        assert_eq!(key, r.eni(), "the key is the eni-id");
        assert!(
            ids.insert(r.field("record-id").to_string()),
            "record {} twice",
            r.field("record-id")
        );
        assert_eq!(
            *partition_of.entry(r.eni().to_string()).or_insert(*p),
            *p,
            "one interface, one partition"
        );
        by_key
            .entry(key.clone())
            .or_default()
            .push((*off, r.field("record-id").to_string()));
    }
    let want_ids: BTreeSet<String> = want
        .iter()
        .map(|r| r.field("record-id").to_string())
        .collect();
    assert_eq!(ids, want_ids, "the topic holds exactly the printed records");
    // Values are the agent's lines, byte for byte.
    let lines: BTreeSet<&str> = msgs.iter().map(|m| m.3.as_str()).collect();
    for r in &want {
        assert!(lines.contains(r.raw.trim_end()), "{}", r.raw);
    }
    // In the order consumed: offsets within a partition (across broker lives in
    // the order of the lists given).
    for (key, got) in by_key {
        let got: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
        let order: Vec<String> = want
            .iter()
            .filter(|r| r.eni() == key)
            .map(|r| r.field("record-id").to_string())
            .collect();
        assert_eq!(got, order, "records of {key} in order");
    }
}

/// Records of two interfaces through a 3-partition topic, lz4-compressed.
#[test]
fn kafka_sink_keyed_and_ordered_per_interface() {
    require_root();
    let a = Netns::new("kfk-a");
    let b = Netns::new("kfk-b");
    let v1 = VethPair::new(&a, &b, "kf", 1);
    let v2 = VethPair::new(&a, &b, "kf", 2);
    let _broker = broker(a.name());
    kafka_tool(a.name(), &["create", BROKER, "flows", "3"]);
    kafka_tool(a.name(), &["create", BROKER, "flows-text", "2"]);
    let spool = scratch("kafka-spool");
    let spool_text = scratch("kafka-text-spool");
    // Two sinks: JSON (lz4) and the text format (zstd) into another topic.
    let config = write_config(
        "kafka",
        &format!(
            "[[sink]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = [\"{BROKER}\"]\ntopic = \"flows\"\ncompression = \"lz4\"\nspool_dir = \"{}\"\n\n[[sink]]\nname = \"bustext\"\ntype = \"kafka\"\nbrokers = [\"{BROKER}\"]\ntopic = \"flows-text\"\ncompression = \"zstd\"\nformat = \"text\"\nfields = [\"eni-id\", \"srcaddr\", \"dstport\", \"packets\", \"record-id\"]\nspool_dir = \"{}\"\n",
            spool.display(),
            spool_text.display()
        ),
    );
    let ag = kafka_agent(
        a.name(),
        &[&v1.if_a, &v2.if_a],
        &["bus", "bustext"],
        &config,
        19483,
    );
    let s2 = UdpSink::bind(b.name(), v4(v2.v4_b, known::DPORT));
    let mut sent2 = 0;
    for _ in 0..3 {
        let s1 = known::sink(&b, &v1);
        known::send(&a, &v1, &s1);
        s1.finish();
        assert_eq!(
            udp_send(
                a.name(),
                v4(v2.v4_a, known::SPORT),
                v4(v2.v4_b, known::DPORT),
                &[200; 5],
                None
            ),
            5
        );
        sent2 += 5;
        assert_eq!(s2.wait_for(sent2, Duration::from_secs(5)), sent2);
        thread::sleep(Duration::from_secs(2));
    }
    thread::sleep(Duration::from_secs(2));
    wait_drained(a.name(), 19483, "bus");
    let stdout = ag.stop();
    let msgs = consume(a.name(), "flows", "2");
    let delivered = delivered_part(&stdout, &spool);
    check_messages(&msgs, delivered);
    // The text topic: the chosen fields of each record, keyed by eni-id.
    let text = consume(a.name(), "flows-text", "2");
    let want: BTreeSet<(String, String)> = delivered_part(&stdout, &spool_text)
        .iter()
        .filter(|r| r.status() != "SKIPDATA")
        .map(|r| {
            let f = ["eni-id", "srcaddr", "dstport", "packets", "record-id"];
            (
                r.eni().to_string(),
                f.map(|k| r.field(k).to_string()).join(" "),
            )
        })
        .collect();
    let got: BTreeSet<(String, String)> = text.iter().map(|m| (m.2.clone(), m.3.clone())).collect();
    assert_eq!(got.len(), text.len(), "a text record twice");
    assert_eq!(got, want, "the text topic");
    let keys: BTreeSet<&str> = msgs.iter().map(|m| m.2.as_str()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    // The partition of each key is the one librdkafka's murmur2 partitioner (the
    // Java client's default) picks among as many partitions.
    kafka_tool(a.name(), &["create", BROKER, "probe", "3"]);
    let mut args = vec!["partition", BROKER, "probe"];
    args.extend(keys.iter().copied());
    let want: BTreeMap<String, i64> = serde_json::from_str(&kafka_tool(a.name(), &args)).unwrap();
    for (p, _, key, _) in &msgs {
        assert_eq!(*p, want[key], "partition of {key}");
    }
    assert_eq!(
        flowlog_tests::totals(udp_to_b(&v1).select(&stdout)),
        (3 * known::PACKETS, 3 * known::BYTES),
        "capture"
    );
    eprintln!(
        "kafka: {} records printed, {} messages in {} partitions",
        stdout.len(),
        msgs.len(),
        msgs.iter().map(|m| m.0).collect::<BTreeSet<_>>().len()
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_dir_all(&spool_text);
    let _ = std::fs::remove_file(&config);
}

/// The broker is stopped for 30 s under traffic, then started again. tansu's
/// in-memory storage starts empty, so the topic is read just before the stop and
/// again after the restart (created anew): together every record, each once.
#[test]
fn kafka_broker_outage() {
    require_root();
    let a = Netns::new("kfo-a");
    let b = Netns::new("kfo-b");
    let v = VethPair::new(&a, &b, "kfo", 1);
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, known::DPORT));
    let mut brk = broker(a.name());
    kafka_tool(a.name(), &["create", BROKER, "flows", "2"]);
    let spool = scratch("kafka-outage-spool");
    let config = write_config(
        "kafka-outage",
        &format!(
            "[[sink]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = [\"{BROKER}\"]\ntopic = \"flows\"\ncompression = \"zstd\"\nspool_dir = \"{}\"\n",
            spool.display()
        ),
    );
    let ag = kafka_agent(a.name(), &[&v.if_a], &["bus"], &config, 19484);
    const N: u64 = 400;
    let sender = known::paced(&a, &v, N as usize, 100, Duration::from_secs(40));
    thread::sleep(Duration::from_secs(4));
    into_window(0.3);
    let printed_before = ag.records().len();
    // A short quiet period: the broker is stopped before the next window ends.
    let before = consume(a.name(), "flows", "0.5");
    assert!(!before.is_empty(), "nothing delivered before the outage");
    assert_eq!(
        before.len(),
        printed_before,
        "all delivered before the stop"
    );
    brk.signal(libc::SIGKILL);
    thread::sleep(Duration::from_secs(30));
    into_window(0.5);
    let waiting = sample(
        &metrics(a.name(), 19484),
        "flowlog_spool_records{sink=\"bus\"}",
    ) as usize;
    assert_eq!(
        waiting,
        ag.records().len() - printed_before,
        "everything printed during the outage waits in the spool"
    );
    let _brk = broker(a.name());
    kafka_tool(a.name(), &["create", BROKER, "flows", "2"]);
    assert_eq!(sender.join().unwrap() as u64, N);
    assert_eq!(udp.wait_for(N, Duration::from_secs(5)), N);
    thread::sleep(Duration::from_secs(2));
    wait_drained(a.name(), 19484, "bus");
    into_window(0.5);
    let m = metrics(a.name(), 19484);
    let printed = ag.records().len();
    let stdout = ag.stop();
    let after = consume(a.name(), "flows", "2");
    let all: Vec<Message> = before.iter().chain(&after).cloned().collect();
    check_messages(&all, delivered_part(&stdout, &spool));
    assert_eq!(
        sample(&m, "flowlog_delivered_records_total{sink=\"bus\"}") as usize,
        printed,
        "delivered metric"
    );
    assert_eq!(
        sample(&m, "flowlog_spool_dropped_records_total{sink=\"bus\"}"),
        0.0
    );
    assert_eq!(
        flowlog_tests::totals(udp_to_b(&v).select(&stdout)),
        (N, N * 128),
        "capture"
    );
    let delivered: Vec<Record> = all.iter().map(|m| Record::parse(&m.3).unwrap()).collect();
    assert_eq!(
        flowlog_tests::totals(udp_to_b(&v).select(&delivered)),
        (N, N * 128),
        "delivered"
    );
    eprintln!(
        "kafka outage: {} records printed, {} before the stop + {} after the restart ({waiting} waited in the spool)",
        stdout.len(),
        before.len(),
        after.len()
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&config);
}

/// SKIPDATA and NODATA over IPFIX, read back by the independent decoder: with
/// `--max-flows 4`, 20 streams on one interface make SKIPDATA records, whose counts
/// must add up in the reliability statistics options records (totals per
/// interface); an idle second interface makes NODATA records (template 258).
#[test]
fn ipfix_skipdata_and_nodata_decoded() {
    require_root();
    let a = Netns::new("ipxs-a");
    let b = Netns::new("ipxs-b");
    let v = VethPair::new(&a, &b, "ixs", 1);
    let idle = VethPair::new(&a, &b, "ixs", 2);
    let tap_file = scratch("skip-tap.ipfix");
    let spool = scratch("skip-spool");
    let _tap = Proc::start(
        a.name(),
        &[
            "python3",
            py("ipfix_tap.py").to_str().unwrap(),
            "udp",
            "2057",
            tap_file.to_str().unwrap(),
        ],
        Some("ready"),
    );
    let config = write_config(
        "ipfix-skip",
        &format!(
            "[[sink]]\nname = \"nf\"\ntype = \"ipfix\"\naddress = \"127.0.0.1:2057\"\nobservation_domain = 7\nspool_dir = \"{}\"\n",
            spool.display()
        ),
    );
    let ag = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--interface",
            &idle.if_a,
            "--window",
            "2s",
            "--max-flows",
            "4",
            "--record-format",
            "extended",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "nf",
            "--output",
            "-",
            "--metrics-address",
            ":19485",
        ],
    );
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let srcs: Vec<std::net::SocketAddr> = (0..20).map(|i| v4(v.v4_a, 41000 + i)).collect();
    let socks = flowlog_tests::traffic::udp_sockets(a.name(), &srcs);
    // Two bursts in two windows: the totals must accumulate.
    for _ in 0..2 {
        flowlog_tests::traffic::settle_into_window(
            Duration::from_secs(2),
            Duration::from_millis(1500),
        );
        for _ in 0..2 {
            for s in &socks {
                assert_eq!(s.send_to(&[7u8; 100], v4(v.v4_b, 5001)).unwrap(), 100);
            }
        }
        thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(sink.wait_for(80, Duration::from_secs(5)), 80);
    thread::sleep(Duration::from_secs(3));
    let stdout = ag.stop();
    thread::sleep(Duration::from_millis(500));
    let decoded = decode(&tap_file);
    let records: Vec<&Value> = decoded
        .iter()
        .flat_map(|m| m["records"].as_array().unwrap())
        .collect();
    // SKIPDATA: one options record per SKIPDATA record, the totals growing by it.
    let skips: Vec<&Record> = stdout.iter().filter(|r| r.status() == "SKIPDATA").collect();
    assert!(skips.len() >= 2, "SKIPDATA in both windows: {stdout:?}");
    let opts: Vec<&&Value> = records.iter().filter(|r| u(r, "template") == 259).collect();
    assert_eq!(
        opts.len(),
        skips.len(),
        "one statistics record per SKIPDATA"
    );
    let mut totals = (0, 0, 0);
    for (r, o) in skips.iter().zip(&opts) {
        totals.0 += r.num("skipped-streams");
        totals.1 += r.num("skipped-packets");
        totals.2 += r.num("skipped-bytes");
        assert_eq!(o["interfaceName"].as_str().unwrap(), r.eni());
        assert_eq!(o["eni-id"].as_str().unwrap(), r.eni());
        assert_eq!(o["log-status"].as_str().unwrap(), "SKIPDATA");
        assert_eq!(
            (
                u(o, "notSentFlowTotalCount"),
                u(o, "notSentPacketTotalCount"),
                u(o, "notSentOctetTotalCount")
            ),
            totals,
            "reliability statistics after {}",
            r.raw
        );
        assert_eq!(
            (u(o, "flowStartSeconds"), u(o, "flowEndSeconds")),
            (r.start(), r.end())
        );
        assert_eq!(u(o, "exportingProcessId"), u(opts[0], "exportingProcessId"));
    }
    let ok: u64 = stdout
        .iter()
        .filter(|r| r.status() == "OK" && r.field("dstport") == "5001")
        .map(|r| r.packets())
        .sum();
    assert_eq!(ok + totals.1, 80, "recorded + not sent packets");
    let t = decoded[0]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| u(t, "id") == 259)
        .expect("options template");
    assert!(t["options"].as_bool().unwrap());
    assert_eq!(u(t, "scope_fields"), 2);
    // NODATA of the idle interface.
    let nodata: BTreeSet<String> = stdout
        .iter()
        .filter(|r| r.status() == "NODATA")
        .map(|r| r.field("record-id").to_string())
        .collect();
    assert!(
        stdout
            .iter()
            .filter(|r| r.status() == "NODATA" && r.eni() == idle.if_a)
            .count()
            >= 2,
        "NODATA records of the idle interface: {stdout:?}"
    );
    let eni_of: BTreeMap<&str, &str> = stdout
        .iter()
        .map(|r| (r.field("record-id"), r.eni()))
        .collect();
    let got: BTreeSet<String> = records
        .iter()
        .filter(|r| u(r, "template") == 258)
        .map(|r| {
            let id = format!("{:016x}", u(r, "record-id"));
            let eni = eni_of.get(id.as_str()).copied().unwrap_or("?");
            assert_eq!(r["interfaceName"].as_str().unwrap(), eni);
            assert_eq!(r["eni-id"].as_str().unwrap(), eni);
            assert_eq!(r["log-status"].as_str().unwrap(), "NODATA");
            assert_eq!(u(r, "traffic_path"), 255);
            format!("{:016x}", u(r, "record-id"))
        })
        .collect();
    assert_eq!(got, nodata, "NODATA records");
    eprintln!(
        "ipfix skipdata: {} SKIPDATA records -> statistics totals {totals:?}; {} NODATA records",
        skips.len(),
        nodata.len()
    );
    let _ = std::fs::remove_dir_all(&spool);
    let _ = std::fs::remove_file(&tap_file);
    let _ = std::fs::remove_file(&config);
}
