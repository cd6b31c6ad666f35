//! End-to-end tests of the `flowlog` agent (root only).
//!
//! Each test builds its own network namespaces joined by veth pairs (IPv6 disabled and
//! neighbours static unless the test needs IPv6, so the only packets are the test's),
//! runs `flowlog run` inside a namespace with `ip netns exec`, sends a known amount of
//! traffic between the namespaces, stops the agent with SIGINT and checks the JSON
//! records exactly:
//!
//! * ICMP echo, UDP with known payload sizes, IPv6 ICMPv6 echo and UDP: exact packets
//!   and IP-layer bytes per stream and direction, ports `-` for ICMP.
//! * TCP of 10 MiB with TSO/GSO on and timestamps off: packets equal the kernel's
//!   `Tcp: OutSegs` (+ `RetransSegs`) delta, i.e. every wire segment and not every
//!   super-packet; bytes equal the payload sent (`TCP_INFO` bytes_sent) + 40 bytes per
//!   segment + the SYN's 12 option bytes; the reverse stream is checked the same way.
//! * 100,000 paced UDP datagrams over more than 5 one-second windows: nothing lost or
//!   counted twice across window boundaries.
//! * NODATA on an idle interface, SKIPDATA when the flow map is full, metadata flags,
//!   XDP mode, configuration errors (exit code 2), and no tc/TCX/XDP attachment left
//!   behind once the agent stopped.
//!
//! Echo requests are sent from a raw socket (no `ping` binary needed). Needs the agent
//! binary (`cargo build -p flowlog-agent`, or `FLOWLOG_BIN`); `FLOWLOG_TEST_TIMEOUT`
//! (seconds, default 20) bounds the agent's start-up and its exit after SIGINT.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    thread,
    time::Duration,
};

use flowlog_tests::{
    known,
    netns::{assert_detached, has_xdp},
    record::validate_record_shape,
    require_root,
    traffic::{
        ping, read_netstat, read_snmp, settle_into_window, snmp_counter, tcp_send, udp_send,
        udp_sockets, v4, v6, TcpSink, UdpSink,
    },
    Agent, Filter, Netns, Record, VethPair,
};

const MIB: u64 = 1024 * 1024;

/// Validates the shape of every record.
fn check_shapes(records: &[Record]) {
    for r in records {
        validate_record_shape(r);
    }
}

fn dump(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| r.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Records of one stream (OK records matching `f`), summed across windows (traffic may
/// straddle a window boundary). Panics, listing every record, if there is none.
///
/// There is deliberately no "one record per window" check based on `start`/`end`: a
/// window switch lands a little after the wall-clock boundary, so packets of the first
/// milliseconds of a window may still be counted (correctly, once) in the previous
/// record, whose `start` then equals the next record's.
fn stream(records: &[Record], f: &Filter) -> (u64, u64, Vec<Record>) {
    let sel: Vec<Record> = f.select(records).into_iter().cloned().collect();
    assert!(
        !sel.is_empty(),
        "no record matches {f}; records:\n{}",
        dump(records)
    );
    let (p, b) = flowlog_tests::totals(&sel);
    (p, b, sel)
}

/// Panics unless every OK record matches one of `filters`: no stray traffic.
fn assert_only_streams(records: &[Record], filters: &[&Filter]) {
    let stray: Vec<&Record> = Filter::ok()
        .select(records)
        .into_iter()
        .filter(|r| !filters.iter().any(|f| f.matches(r)))
        .collect();
    assert!(
        stray.is_empty(),
        "unexpected OK records: {stray:#?}\nall records:\n{}",
        dump(records)
    );
}

/// Bytes of a UDP/IPv4 datagram of `payload` bytes at the IP layer.
fn udp4_bytes(payloads: &[usize]) -> u64 {
    payloads.iter().map(|p| 28 + *p as u64).sum()
}

fn known_sizes() -> Vec<usize> {
    let mut v = vec![100; 7];
    v.extend([1000; 5]);
    v
}

#[test]
fn icmp_echo_counts_exact() {
    require_root();
    let a = Netns::new("icmp-a");
    let b = Netns::new("icmp-b");
    let v = VethPair::new(&a, &b, "icm", 1);
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "2s"]);
    let replies = ping(a.name(), v.v4_b.into(), 10, 56, Duration::from_millis(10));
    assert_eq!(replies, 10, "echo replies received");
    let recs = agent.stop();
    check_shapes(&recs);
    let out = Filter::ok()
        .dir("out")
        .proto(1)
        .src(v.v4_a)
        .dst(v.v4_b)
        .sport("-")
        .dport("-");
    let inb = Filter::ok()
        .dir("in")
        .proto(1)
        .src(v.v4_b)
        .dst(v.v4_a)
        .sport("-")
        .dport("-");
    for f in [&out, &inb] {
        let (p, bytes, sel) = stream(&recs, f);
        assert_eq!(
            (p, bytes),
            (10, 840),
            "packets/bytes of {f}:\n{}",
            dump(&sel)
        );
        for r in &sel {
            assert_eq!(r.field("type"), "IPv4");
            assert_eq!(r.field("action"), "ACCEPT");
            assert_eq!(r.eni(), v.if_a, "default eni-id is the interface name");
            assert_eq!(r.field("account-id"), "-", "account-id unset");
        }
    }
    assert_only_streams(&recs, &[&out, &inb]);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn udp_known_sizes_exact() {
    require_root();
    let a = Netns::new("udp-a");
    let b = Netns::new("udp-b");
    let v = VethPair::new(&a, &b, "udp", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "2s",
            "--mode",
            "tc",
        ],
    );
    let sizes = known_sizes();
    let sent = udp_send(a.name(), v4(v.v4_a, 40000), v4(v.v4_b, 5001), &sizes, None);
    assert_eq!(sent, 12);
    assert_eq!(
        sink.wait_for(12, Duration::from_secs(5)),
        12,
        "datagrams received"
    );
    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    let f = known::filter(&v);
    let (p, bytes, _) = stream(&recs, &f);
    assert_eq!(p, 12);
    assert_eq!(bytes, 7 * 128 + 5 * 1028);
    assert_eq!(bytes, udp4_bytes(&sizes));
    assert_only_streams(&recs, &[&f]);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn tcp_10mib_with_tso_matches_out_segs() {
    require_root();
    let a = Netns::new("tcp-a");
    let b = Netns::new("tcp-b");
    let v = VethPair::new(&a, &b, "tcp", 1);
    // Without timestamps every data segment has exactly 20 + 20 header bytes and the
    // SYN carries MSS (4) + NOP,NOP,SACK_PERM (4) + NOP,WSCALE (4) = 12 option bytes.
    a.sysctl("net.ipv4.tcp_timestamps=0");
    let tso = String::from_utf8_lossy(&a.exec(&["ethtool", "-k", &v.if_a]).stdout).into_owned();
    eprintln!("offloads of {}:\n{tso}", v.if_a);
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "2s"]);
    let server = TcpSink::bind(b.name(), v4(v.v4_b, 5201));
    let before = read_snmp(a.name());
    let server_before = read_netstat(b.name());
    let payload = 10 * MIB;
    let sender = tcp_send(a.name(), v4(v.v4_b, 5201), payload as usize);
    let local = sender.local;
    assert_eq!(server.finish(), payload, "bytes received by the server");
    // The last ACK (of the server's FIN) leaves before read() returns EOF; give
    // anything else in flight time to settle.
    thread::sleep(Duration::from_millis(300));
    let after = read_snmp(a.name());
    let server_after = read_netstat(b.name());
    let recs = agent.stop();
    check_shapes(&recs);
    let delta = |k: &str| (snmp_counter(&after, k) - snmp_counter(&before, k)) as u64;
    // OutSegs leaves retransmissions out (RFC 1213); they are on the wire too.
    let segs = delta("Tcp:OutSegs") + delta("Tcp:RetransSegs");
    eprintln!(
        "OutSegs delta {}, RetransSegs delta {}, sender {sender:?}",
        delta("Tcp:OutSegs"),
        delta("Tcp:RetransSegs")
    );
    assert!(segs > payload / 1460, "implausible segment count {segs}");
    if u64::from(sender.segs_out) != segs {
        eprintln!("note: socket segs_out {} != SNMP {segs}", sender.segs_out);
    }
    let out = Filter::ok()
        .dir("out")
        .proto(6)
        .src(v.v4_a)
        .sport(local.port())
        .dst(v.v4_b)
        .dport(5201);
    let (p, bytes, sel) = stream(&recs, &out);
    assert_eq!(
        p, segs,
        "out packets must be wire segments (OutSegs + RetransSegs), not GSO super-packets"
    );
    // Payload actually sent (10 MiB, plus any retransmitted bytes), 40 header bytes per
    // segment, and the SYN's options.
    assert!(sender.bytes_sent >= payload);
    let extra = bytes as i64 - sender.bytes_sent as i64 - 40 * segs as i64;
    assert_eq!(
        extra, 12,
        "bytes - payload sent - 40 * segments should be the SYN's 12 option bytes \
         (bytes {bytes}, payload sent {}, segments {segs})",
        sender.bytes_sent
    );
    let flags = sel.iter().fold(0, |acc, r| acc | r.tcp_flags());
    assert_eq!(
        flags & 0x13,
        0x13,
        "tcp-flags of {out} lack SYN|ACK|FIN: {flags}"
    );
    let inb = Filter::ok()
        .dir("in")
        .proto(6)
        .src(v.v4_b)
        .sport(5201)
        .dst(v.v4_a)
        .dport(local.port());
    let (ip, ibytes, insel) = stream(&recs, &inb);
    // The server sends only its SYN-ACK (12 option bytes, no timestamps since the
    // client did not offer them) and option-less ACKs/FIN, unless segments reached it
    // out of order (veth delivers on the sending CPU: a sender that moves between CPUs
    // can reorder) or twice, when its ACKs carry SACK / D-SACK blocks.
    let server_delta = |k: &str| {
        server_after.get(k).copied().unwrap_or(0) - server_before.get(k).copied().unwrap_or(0)
    };
    let sacks = [
        "TcpExt:TCPOFOQueue",
        "TcpExt:TCPDSACKOldSent",
        "TcpExt:TCPDSACKOfoSent",
    ]
    .iter()
    .map(|k| server_delta(k))
    .sum::<i64>();
    if sender.total_retrans == 0 && sacks == 0 {
        assert_eq!(
            ibytes,
            40 * ip + 12,
            "in bytes of {inb}: 40 per segment + the SYN-ACK's options"
        );
    } else {
        eprintln!(
            "{} retransmissions, {sacks} out-of-order/duplicate arrivals at the server: \
             its ACKs may carry SACK blocks",
            sender.total_retrans
        );
        assert!(ibytes >= 40 * ip + 12, "in bytes of {inb}");
        // Each SACK option is 2 + 8 per block, padded to 4: at most 36 bytes.
        assert!(ibytes <= 40 * ip + 12 + 36 * ip, "in bytes of {inb}");
    }
    let in_flags = insel.iter().fold(0, |acc, r| acc | r.tcp_flags());
    assert_eq!(
        in_flags & 0x13,
        0x13,
        "SYN-ACK, ACKs and FIN from the server: {in_flags}"
    );
    assert_only_streams(&recs, &[&out, &inb]);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn ipv6_icmp_and_udp_exact() {
    require_root();
    let a = Netns::new("ip6-a");
    let b = Netns::new("ip6-b");
    let v = VethPair::dual_stack(&a, &b, "ip6", 3);
    let (a6, b6) = (v.v6a(), v.v6b());
    assert_eq!(a6.to_string(), "fd00:3::1");
    let sink = UdpSink::bind(b.name(), v6(b6, 5001));
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "2s"]);
    let replies = ping(a.name(), b6.into(), 10, 56, Duration::from_millis(10));
    assert_eq!(replies, 10, "ICMPv6 echo replies");
    let sizes = [100usize, 200, 1200];
    assert_eq!(
        udp_send(a.name(), v6(a6, 40000), v6(b6, 5001), &sizes, None),
        3
    );
    assert_eq!(sink.wait_for(3, Duration::from_secs(5)), 3);
    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    let icmp_out = Filter::ok()
        .dir("out")
        .proto(58)
        .src(a6)
        .dst(b6)
        .sport("-")
        .dport("-");
    let icmp_in = Filter::ok()
        .dir("in")
        .proto(58)
        .src(b6)
        .dst(a6)
        .sport("-")
        .dport("-");
    for f in [&icmp_out, &icmp_in] {
        let (p, bytes, sel) = stream(&recs, f);
        assert_eq!((p, bytes), (10, 1040), "{f}:\n{}", dump(&sel));
        assert!(sel.iter().all(|r| r.field("type") == "IPv6"));
    }
    let udp = Filter::ok()
        .dir("out")
        .proto(17)
        .src(a6)
        .sport(40000)
        .dst(b6)
        .dport(5001);
    let (p, bytes, sel) = stream(&recs, &udp);
    assert_eq!(p, 3);
    assert_eq!(bytes, sizes.iter().map(|s| 48 + *s as u64).sum::<u64>());
    assert!(sel.iter().all(|r| r.field("type") == "IPv6"));
    // Nothing else between the two global addresses (static neighbours: no NDP).
    let ours: Vec<Record> = Filter::ok()
        .select(&recs)
        .into_iter()
        .filter(|r| {
            let ends = [r.field("srcaddr"), r.field("dstaddr")];
            ends.contains(&a6.to_string().as_str()) || ends.contains(&b6.to_string().as_str())
        })
        .cloned()
        .collect();
    assert_only_streams(&ours, &[&icmp_out, &icmp_in, &udp]);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn udp_100k_paced_across_windows() {
    require_root();
    let a = Netns::new("bulk-a");
    let b = Netns::new("bulk-b");
    let v = VethPair::new(&a, &b, "blk", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "1s"]);
    const N: usize = 100_000;
    const PAYLOAD: usize = 64;
    let sent = udp_send(
        a.name(),
        v4(v.v4_a, 40000),
        v4(v.v4_b, 5001),
        &vec![PAYLOAD; N],
        Some(Duration::from_millis(6500)),
    );
    assert_eq!(sent, N);
    thread::sleep(Duration::from_millis(100));
    let recs = agent.stop();
    let received = sink.finish().0;
    eprintln!("receiver got {received} of {N} datagrams");
    check_shapes(&recs);
    let f = known::filter(&v);
    let (p, bytes, sel) = stream(&recs, &f);
    assert_eq!(p, N as u64, "packets over all windows:\n{}", dump(&sel));
    assert_eq!(bytes, (N * (28 + PAYLOAD)) as u64);
    let ends: BTreeSet<u64> = sel.iter().map(Record::end).collect();
    assert!(
        ends.len() >= 5,
        "expected records from >= 5 windows, got ends {ends:?}"
    );
    assert_only_streams(&recs, &[&f]);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn nodata_on_idle_interface() {
    require_root();
    let a = Netns::new("idle-a");
    let b = Netns::new("idle-b");
    let v = VethPair::new(&a, &b, "idl", 1);
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "1s"]);
    thread::sleep(Duration::from_millis(3500));
    let recs = agent.stop();
    check_shapes(&recs);
    let nodata = Filter::any().status("NODATA").eni(&v.if_a).select(&recs);
    assert!(
        !nodata.is_empty(),
        "no NODATA record for {}; records:\n{}",
        v.if_a,
        dump(&recs)
    );
    for r in &nodata {
        assert!(
            r.end() - r.start() <= 1,
            "a 1 s window spans more than 1 s: {r}"
        );
    }
    // About 3.5 s of 1 s windows: consecutive windows, each starting where the
    // previous one ended (no window without its NODATA record).
    assert!(
        nodata.len() >= 3,
        "too few NODATA records:\n{}",
        dump(&recs)
    );
    for w in nodata.windows(2) {
        assert_eq!(
            w[1].start(),
            w[0].end(),
            "gap or overlap between NODATA windows:\n{}\n{}",
            w[0],
            w[1]
        );
    }
    assert!(
        Filter::ok().select(&recs).is_empty(),
        "OK records on an idle interface:\n{}",
        dump(&recs)
    );
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn metadata_flags_in_records() {
    require_root();
    let a = Netns::new("meta-a");
    let b = Netns::new("meta-b");
    let v1 = VethPair::new(&a, &b, "met", 1);
    let v2 = VethPair::new(&a, &b, "met", 2);
    let sink1 = UdpSink::bind(b.name(), v4(v1.v4_b, 5001));
    let sink2 = UdpSink::bind(b.name(), v4(v2.v4_b, 5002));
    let eni = format!("{}=eni-test", v1.if_a);
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v1.if_a,
            "--interface",
            &v2.if_a,
            "--window",
            "2s",
            "--eni-id",
            &eni,
            "--account-id",
            "123",
            "--vm-id",
            "i-1",
            "--vswitch-id",
            "vsw-1",
            "--vpc-id",
            "vpc-1",
        ],
    );
    let s1 = udp_send(
        a.name(),
        v4(v1.v4_a, 40001),
        v4(v1.v4_b, 5001),
        &[10; 3],
        None,
    );
    let s2 = udp_send(
        a.name(),
        v4(v2.v4_a, 40002),
        v4(v2.v4_b, 5002),
        &[20; 4],
        None,
    );
    assert_eq!((s1, s2), (3, 4));
    assert_eq!(sink1.wait_for(3, Duration::from_secs(5)), 3);
    assert_eq!(sink2.wait_for(4, Duration::from_secs(5)), 4);
    let recs = agent.stop();
    check_shapes(&recs);
    assert!(!recs.is_empty());
    for r in &recs {
        assert_eq!(r.field("account-id"), "123", "{r}");
        assert_eq!(r.field("vm-id"), "i-1", "{r}");
        assert_eq!(r.field("vswitch-id"), "vsw-1", "{r}");
        assert_eq!(r.field("vpc-id"), "vpc-1", "{r}");
        assert!(
            r.eni() == "eni-test" || r.eni() == v2.if_a,
            "eni-id {} is neither the configured id nor {}: {r}",
            r.eni(),
            v2.if_a
        );
    }
    let f1 = Filter::ok()
        .eni("eni-test")
        .dir("out")
        .proto(17)
        .src(v1.v4_a)
        .sport(40001)
        .dst(v1.v4_b)
        .dport(5001);
    let f2 = Filter::ok()
        .eni(&v2.if_a)
        .dir("out")
        .proto(17)
        .src(v2.v4_a)
        .sport(40002)
        .dst(v2.v4_b)
        .dport(5002);
    let (p1, b1, _) = stream(&recs, &f1);
    let (p2, b2, _) = stream(&recs, &f2);
    assert_eq!((p1, b1), (3, 3 * 38));
    assert_eq!((p2, b2), (4, 4 * 48));
    assert_only_streams(&recs, &[&f1, &f2]);
    sink1.finish();
    sink2.finish();
    assert_detached(a.name(), &v1.if_a);
    assert_detached(a.name(), &v2.if_a);
}

#[test]
fn xdp_mode_counts_ingress_exactly() {
    require_root();
    let a = Netns::new("xdp-a");
    let b = Netns::new("xdp-b");
    let v = VethPair::new(&a, &b, "xd", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    // The agent watches B's end: XDP sees what arrives there.
    let agent = Agent::start(
        b.name(),
        &[
            "run",
            "--interface",
            &v.if_b,
            "--window",
            "2s",
            "--mode",
            "xdp",
        ],
    );
    assert!(
        has_xdp(b.name(), &v.if_b),
        "no XDP program on {} in xdp mode",
        v.if_b
    );
    let sizes = known_sizes();
    let sent = udp_send(
        a.name(),
        v4(v.v4_a, 40000),
        v4(v.v4_b, 5001),
        &sizes,
        Some(Duration::from_millis(60)),
    );
    assert_eq!(sent, 12);
    assert_eq!(
        sink.wait_for(12, Duration::from_secs(5)),
        12,
        "datagrams received"
    );
    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    let f = Filter::ok()
        .eni(&v.if_b)
        .dir("in")
        .proto(17)
        .src(v.v4_a)
        .sport(40000)
        .dst(v.v4_b)
        .dport(5001);
    let (p, bytes, _) = stream(&recs, &f);
    assert_eq!((p, bytes), (12, udp4_bytes(&sizes)));
    assert_only_streams(&recs, &[&f]);
    assert_detached(b.name(), &v.if_b);
}

#[test]
fn skipdata_when_flow_map_full() {
    require_root();
    let a = Netns::new("skip-a");
    let b = Netns::new("skip-b");
    let v = VethPair::new(&a, &b, "skp", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "2s",
            "--max-flows",
            "4",
        ],
    );
    // 20 streams (source ports 41000..41019) of 2 datagrams of 100 bytes each, sent
    // in one quick burst inside one window.
    const STREAMS: u16 = 20;
    let srcs: Vec<SocketAddr> = (0..STREAMS).map(|i| v4(v.v4_a, 41000 + i)).collect();
    let socks = udp_sockets(a.name(), &srcs);
    let dst = v4(v.v4_b, 5001);
    settle_into_window(Duration::from_secs(2), Duration::from_millis(1500));
    for _ in 0..2 {
        for s in &socks {
            assert_eq!(s.send_to(&[7u8; 100], dst).expect("UDP send"), 100);
        }
    }
    sink.wait_for(40, Duration::from_secs(5));
    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    let ok = Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .dst(v.v4_b)
        .dport(5001)
        .select(&recs);
    let skipped = Filter::any().status("SKIPDATA").eni(&v.if_a).select(&recs);
    assert!(
        !skipped.is_empty(),
        "no SKIPDATA record with --max-flows 4 and 20 streams:\n{}",
        dump(&recs)
    );
    let (ok_p, ok_b) = flowlog_tests::totals(ok.iter().copied());
    let skip_p: u64 = skipped.iter().map(|r| r.num("skipped-packets")).sum();
    let skip_b: u64 = skipped.iter().map(|r| r.num("skipped-bytes")).sum();
    let skip_s: u64 = skipped.iter().map(|r| r.num("skipped-streams")).sum();
    assert_eq!(ok_p + skip_p, 40, "recorded + skipped packets");
    assert_eq!(ok_b + skip_b, 40 * 128, "recorded + skipped bytes");
    assert!(
        ok.len() as u64 + skip_s >= STREAMS as u64,
        "recorded streams {} + skipped streams {skip_s} < {STREAMS}",
        ok.len()
    );
    // Windows are aligned to multiples of 2 s, so start / 2 names a record's window.
    let mut per_window: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &ok {
        *per_window.entry(r.start() / 2).or_default() += 1;
    }
    assert!(
        per_window.values().all(|n| *n <= 4),
        "more than 4 streams in a window with --max-flows 4:\n{}",
        dump(&recs)
    );
    let windows: BTreeSet<u64> = ok.iter().chain(&skipped).map(|r| r.start() / 2).collect();
    if windows.len() == 1 {
        // The burst fell into one window (the usual case): exactly 4 streams recorded
        // and the 16 others skipped.
        assert_eq!(ok.len(), 4, "recorded streams:\n{}", dump(&recs));
        assert_eq!(skip_s, STREAMS as u64 - 4, "skipped-streams");
    } else {
        eprintln!("burst straddled a window boundary: exact stream split not checked");
    }
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn bad_input_exits_with_code_2() {
    require_root();
    let ns = Netns::new("bad");
    let r = flowlog_tests::run_to_exit(
        ns.name(),
        &["run", "--interface", "flnosuch0", "--window", "2s"],
    );
    assert_eq!(r.code(), Some(2), "unknown interface: {r:?}");
    assert!(
        r.stderr.contains("flnosuch0"),
        "stderr does not name the unknown interface: {}",
        r.stderr
    );
    assert!(
        r.stdout.trim().is_empty(),
        "records on a config error: {}",
        r.stdout
    );
    let r = flowlog_tests::run_to_exit(ns.name(), &["run", "--interface", "lo", "--window", "0"]);
    assert_eq!(r.code(), Some(2), "--window 0: {r:?}");
    assert!(!r.stderr.trim().is_empty(), "no message for --window 0");
    assert!(
        r.stdout.trim().is_empty(),
        "records on a config error: {}",
        r.stdout
    );
}

/// SIGSTOP for about three windows under paced traffic, then SIGCONT: no packet is
/// lost, and the records of the window that the late switch closes say what time they
/// cover (their `end` is the switch, not the boundary that passed while stopped).
#[test]
fn stalled_agent_loses_nothing_and_says_what_its_records_cover() {
    require_root();
    let a = Netns::new("stall-a");
    let b = Netns::new("stall-b");
    let v = VethPair::new(&a, &b, "stl", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let agent = Agent::start(a.name(), &["run", "--interface", &v.if_a, "--window", "2s"]);
    const N: usize = 2_000;
    let sender = {
        let (ns, src, dst) = (a.name().to_string(), v4(v.v4_a, 40000), v4(v.v4_b, 5001));
        thread::spawn(move || udp_send(&ns, src, dst, &vec![50; N], Some(Duration::from_secs(10))))
    };
    thread::sleep(Duration::from_millis(2500));
    agent.signal(libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    thread::sleep(Duration::from_millis(6500));
    agent.signal(libc::SIGCONT);
    let stall = stopped.elapsed().as_secs();
    assert_eq!(sender.join().unwrap(), N);
    thread::sleep(Duration::from_millis(300));
    let recs = agent.stop();
    sink.finish();
    let f = known::filter(&v);
    let (p, bytes, sel) = stream(&recs, &f);
    assert_eq!(p, N as u64, "packets over all windows:\n{}", dump(&sel));
    assert_eq!(bytes, (N * (28 + 50)) as u64);
    // The window closed after the stall spans it; every other one spans about a window.
    let longest = sel.iter().map(|r| r.end() - r.start()).max().unwrap();
    assert!(
        longest >= stall,
        "no record covers the {stall} s stall:\n{}",
        dump(&sel)
    );
    // Records never overlap in time claimed beyond their window: each ends after it
    // starts, and the windows' NODATA/OK records tile the run without gaps.
    let mut ends: Vec<u64> = recs.iter().map(Record::end).collect();
    ends.sort_unstable();
    ends.dedup();
    let starts: BTreeSet<u64> = recs.iter().map(Record::start).collect();
    for w in ends.windows(2) {
        assert!(w[1] > w[0]);
    }
    assert!(starts.iter().all(|s| *s <= *ends.last().unwrap()));
    assert_detached(a.name(), &v.if_a);
}

/// The records of a sink's file `name`, which must hold whole JSON records only (no cut
/// last line).
fn whole_records(name: &str, text: &str) -> Vec<Record> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{name}: partial line"
    );
    text.lines()
        .map(|line| Record::parse(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}")))
        .collect()
}

/// A `[[sink]]` of type file, rotated every ~4 KiB, while paced traffic flows over
/// 1 s windows and a reader keeps reading the finished files: every line the reader
/// ever sees is a whole record, the run leaves no `.part` file, and the records in the
/// directory count the traffic exactly.
#[test]
fn file_sink_rotates_and_readers_never_see_a_partial_line() {
    require_root();
    let a = Netns::new("fsink-a");
    let b = Netns::new("fsink-b");
    let v = VethPair::new(&a, &b, "fsk", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let dir = std::env::temp_dir().join(format!("flowlog-fsink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = std::env::temp_dir().join(format!("flowlog-fsink-{}.toml", std::process::id()));
    let text_dir = dir.with_extension("text");
    let _ = std::fs::remove_dir_all(&text_dir);
    std::fs::write(
        &config,
        format!(
            "[[sink]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\nrotate_bytes = 4000\n\n\
             [[sink]]\nname = \"table\"\ntype = \"file\"\npath = \"{}\"\nformat = \"text\"\n\
             fields = [\"srcport\", \"packets\", \"bytes\", \"log-status\"]\n",
            dir.display(),
            text_dir.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "1s",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "archive",
            "--sink",
            "table",
        ],
    );
    // A reader that, like a log shipper, reads every finished file again and again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (dir, stop) = (dir.clone(), stop.clone());
        thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().into_string().unwrap();
                    if name.ends_with(".part") {
                        continue;
                    }
                    let Ok(text) = std::fs::read_to_string(e.path()) else {
                        continue; // renamed or pruned meanwhile
                    };
                    whole_records(&name, &text);
                    reads += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            reads
        })
    };
    // 40 streams (source ports) x 30 datagrams over 4 s: several windows and files.
    const PORTS: u16 = 40;
    for round in 0..30 {
        for p in 0..PORTS {
            udp_send(
                a.name(),
                v4(v.v4_a, 41000 + p),
                v4(v.v4_b, 5001),
                &[20],
                None,
            );
        }
        thread::sleep(Duration::from_millis(130 + (round % 2) * 10));
    }
    assert_eq!(sink.wait_for(1200, Duration::from_secs(5)), 1200);
    let stdout = agent.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(stdout.is_empty(), "records went to stdout too: {stdout:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("flows-") && f.ends_with(".json")),
        "{files:?}"
    );
    assert!(
        files.len() >= 3,
        "expected rotation into several files: {files:?}"
    );
    assert!(reads > 0, "the reader never read a finished file");
    let recs: Vec<Record> = files
        .iter()
        .flat_map(|f| whole_records(f, &std::fs::read_to_string(dir.join(f)).unwrap()))
        .collect();
    let f = Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .dst(v.v4_b)
        .dport(5001);
    let (p, bytes, _) = stream(&recs, &f);
    assert_eq!((p, bytes), (1200, 1200 * 48), "records in the directory");
    // The text sink: one file (no rotation limit hit), the header, then the columns.
    let text_files: Vec<_> = std::fs::read_dir(&text_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(text_files.len(), 1, "{text_files:?}");
    assert!(text_files[0].to_str().unwrap().ends_with(".txt"));
    let text = std::fs::read_to_string(&text_files[0]).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("srcport packets bytes log-status"));
    let (mut tp, mut tb) = (0u64, 0u64);
    for line in lines {
        let cols: Vec<&str> = line.split(' ').collect();
        assert_eq!(cols.len(), 4, "{line}");
        if cols[3] == "OK" {
            tp += cols[1].parse::<u64>().unwrap();
            tb += cols[2].parse::<u64>().unwrap();
        }
    }
    assert_eq!((tp, tb), (1200, 1200 * 48), "records in the text sink");
    let _ = std::fs::remove_dir_all(&text_dir);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}

/// A file sink on a full disk (a 64 KiB tmpfs): the agent keeps capturing and keeps
/// writing stdout exactly; the archive keeps only whole lines and the failures are
/// logged, per window.
#[test]
fn a_full_disk_neither_stops_capture_nor_the_other_sinks() {
    require_root();
    let a = Netns::new("full-a");
    let b = Netns::new("full-b");
    let v = VethPair::new(&a, &b, "ful", 1);
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let dir = std::env::temp_dir().join(format!("flowlog-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mount = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "flowlog-test",
            dir.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mount.success(), "mounting a tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    let archive = dir.join("archive");
    let config = std::env::temp_dir().join(format!("flowlog-full-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[sink]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "1s",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "archive",
            "--output",
            "-",
        ],
    );
    // 300 streams a window for 3 windows: about 100 KiB of records per window.
    for round in 0..3u16 {
        for p in 0..300u16 {
            udp_send(
                a.name(),
                v4(v.v4_a, 20000 + round * 1000 + p),
                v4(v.v4_b, 5001),
                &[8],
                None,
            );
        }
        thread::sleep(Duration::from_millis(1000));
    }
    assert_eq!(sink.wait_for(900, Duration::from_secs(5)), 900);
    thread::sleep(Duration::from_millis(1200));
    assert!(agent.is_running(), "the agent stopped: {}", agent.stderr());
    let err = agent.stderr();
    let recs = agent.stop();
    let _ = std::fs::remove_file(&config);
    assert!(err.contains("sink failed"), "no failure logged:\n{err}");
    // stdout: every packet, exactly.
    let f = Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .dst(v.v4_b)
        .dport(5001);
    let (p, bytes, _) = stream(&recs, &f);
    assert_eq!((p, bytes), (900, 900 * 36));
    // The archive holds whole lines only.
    for e in std::fs::read_dir(&archive).unwrap() {
        let path = e.unwrap().path();
        whole_records(
            &path.display().to_string(),
            &std::fs::read_to_string(&path).unwrap(),
        );
    }
}
