//! End-to-end tests of the security policy (root only): rule sets evaluated in the
//! kernel, ACCEPT/REJECT per stream, enforce and audit modes, stateful and stateless
//! kinds, reloads on SIGHUP, the data transfer type filter, and bad policy input.
//!
//! Each test builds its own namespaces joined by veth pairs (static neighbours, IPv6
//! off unless needed, so the only IP packets are the test's), runs `flowlog run
//! --policy FILE --record-format extended` in one of them, and compares the records
//! with figures the sockets and the kernel measured themselves, never with assumed
//! ones:
//!
//! * TCP: `TCP_INFO` of every client and server socket (segments sent, SYN
//!   retransmissions included; payload bytes), cross-checked against each namespace's
//!   `Tcp: OutSegs + RetransSegs` delta. The SYN-ACK leaves from the listener's
//!   request socket, so a server's segments are the accepted socket's `segs_out` + 1.
//!   With `tcp_timestamps=0` a Linux SYN (and the SYN-ACK answering it) carries MSS,
//!   SACK_PERM and WSCALE: 12 option bytes, 52 IP bytes; so a direction's bytes are
//!   `bytes_sent + 40 * segments + 12`.
//! * UDP and ICMP: datagrams of known size sent one by one, deliveries counted by the
//!   receiving sockets (plus `Udp: RcvbufErrors` under load).
//!
//! Scenarios:
//!
//! * The textbook web server on port 80, one allowed client address and four rejected
//!   ones, with real connection attempts: enforce (the rejected connects time out;
//!   their SYNs and retransmissions are REJECT records, exact per client) and audit
//!   (everything connects; the same client->server streams are REJECT throughout).
//! * Stateful versus stateless with an egress-only allow rule (replies tracked in,
//!   or rejected and dropped); rule priorities over overlapping CIDRs.
//! * Reloads: under 20,000 paced datagrams (totals exact, verdicts switch once), with
//!   an unchanged policy (established connections unaffected), revoking the rule of an
//!   inbound connection (rejected both ways from then on), and broken files (the old
//!   policy stays, the error names the rule set, rule and field).
//! * `--transfer-type all|allow|reject`, start-up errors (exit code 2), IPv6 /64 rule.
//!
//! Expected semantics the checks encode: `rule-id` of a stateful connection's
//! initiating stream is the rule that accepted it (replies: `tracked`); audit marks
//! exactly what enforce would drop; a reload re-judges a tracked connection by its
//! opening direction, so an unchanged policy changes no verdict. Figures that
//! disagree are collected and reported together, so a failing test lists every
//! discrepancy of its scenario with the records.
//!
//! Needs the agent binary (`cargo build -p flowlog-agent`, or `FLOWLOG_BIN`).
use std::{
    collections::BTreeMap,
    fmt::{Debug, Display},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

use flowlog_tests::{
    netns::with_netns,
    policy::PolicyFile,
    record::validate_extended_record_shape,
    require_root, run_to_exit,
    tcp::{tcp_exchange_from, ClientOutcome, ServedConn, TcpServer},
    traffic::{ping, read_snmp, snmp_counter, udp_send, v4, UdpSink},
    Agent, Filter, Netns, Record, VethPair,
};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn dump(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| r.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every record has the extended shape, and no two records of a run share a
/// record-id.
fn check_shapes(records: &[Record]) {
    let mut ids = std::collections::BTreeSet::new();
    for r in records {
        validate_extended_record_shape(r);
        assert!(
            ids.insert(r.field("record-id").to_string()),
            "record-id twice: {r}"
        );
    }
}

/// Packets and bytes of the OK records matching `f`, per (action, rule-id): a stream
/// that got both verdicts, or records from several windows, are told apart or summed.
fn verdicts(records: &[Record], f: &Filter) -> BTreeMap<(String, String), (u64, u64)> {
    let mut m = BTreeMap::new();
    for r in Filter::ok().select(records) {
        if !f.matches(r) {
            continue;
        }
        let e = m
            .entry((r.action().to_string(), r.rule_id().to_string()))
            .or_insert((0, 0));
        e.0 += r.packets();
        e.1 += r.bytes();
    }
    m
}

/// The expected [`verdicts`] of a stream with one verdict.
fn one(
    action: &str,
    rule: &str,
    packets: u64,
    bytes: u64,
) -> BTreeMap<(String, String), (u64, u64)> {
    BTreeMap::from([((action.to_string(), rule.to_string()), (packets, bytes))])
}

/// Total packets and bytes of a [`verdicts`] map.
fn total(v: &BTreeMap<(String, String), (u64, u64)>) -> (u64, u64) {
    v.values().fold((0, 0), |(p, b), (pp, bb)| (p + pp, b + bb))
}

/// OR of the tcp-flags of the OK records matching `f`.
fn flags(records: &[Record], f: &Filter) -> u64 {
    Filter::ok()
        .select(records)
        .into_iter()
        .filter(|r| f.matches(r))
        .fold(0, |acc, r| acc | r.tcp_flags())
}

/// Collects failed checks so that one run reports every discrepancy of a scenario.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn eq<T: PartialEq + Debug>(&mut self, what: impl Display, got: T, want: T) {
        if got != want {
            self.failures.push(format!(
                "{what}:\n      got      {got:?}\n      expected {want:?}"
            ));
        }
    }

    fn that(&mut self, ok: bool, what: impl Display) {
        if !ok {
            self.failures.push(what.to_string());
        }
    }

    /// Panics listing every failed check, then all records.
    fn finish(self, records: &[Record]) {
        assert!(
            self.failures.is_empty(),
            "{} check(s) failed:\n  - {}\nrecords:\n{}",
            self.failures.len(),
            self.failures.join("\n  - "),
            dump(records)
        );
    }
}

/// OK records matching none of `filters`: stray traffic.
fn strays(records: &[Record], filters: &[Filter]) -> Vec<String> {
    Filter::ok()
        .select(records)
        .into_iter()
        .filter(|r| !filters.iter().any(|f| f.matches(r)))
        .map(|r| r.raw.clone())
        .collect()
}

fn tcp_segs(ns: &str) -> i64 {
    let m = read_snmp(ns);
    snmp_counter(&m, "Tcp:OutSegs") + snmp_counter(&m, "Tcp:RetransSegs")
}

/// A UDP socket bound to `addr` inside `ns`, with a receive timeout.
fn udp_socket(ns: &str, addr: SocketAddr, timeout: Duration) -> UdpSocket {
    let s = with_netns(ns, move || {
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"))
    });
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Receives datagrams until none arrives within the socket's timeout.
fn drain(s: &UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn agent_args<'a>(iface: &'a str, policy: &'a PolicyFile, window: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--interface",
        iface,
        "--policy",
        policy.arg(),
        "--record-format",
        "extended",
        "--window",
        window,
    ]
}

// ---------------------------------------------------------------------------------
// 1, 2: the textbook web server: one allowed client, four rejected ones
// ---------------------------------------------------------------------------------

/// Client addresses: 10.200.<idx>.11 is allowed, .12 to .15 are not.
const CLIENT_HOSTS: [u8; 5] = [11, 12, 13, 14, 15];
const ALLOWED_RULE: u32 = 100;

struct Web {
    srv: Netns,
    cli: Netns,
    v: VethPair,
    clients: Vec<Ipv4Addr>,
}

impl Web {
    /// Server namespace (side A, 10.200.idx.1, port 80) and one client namespace whose
    /// veth end carries the five client addresses; timestamps off on both sides.
    fn new(tag: &str, idx: u8) -> Web {
        let srv = Netns::new(&format!("{tag}-s"));
        let cli = Netns::new(&format!("{tag}-c"));
        let v = VethPair::new(&srv, &cli, tag, idx);
        srv.sysctl("net.ipv4.tcp_timestamps=0");
        cli.sysctl("net.ipv4.tcp_timestamps=0");
        let clients: Vec<Ipv4Addr> = CLIENT_HOSTS
            .iter()
            .map(|h| Ipv4Addr::new(10, 200, idx, *h))
            .collect();
        for c in &clients {
            cli.exec(&["ip", "addr", "add", &format!("{c}/24"), "dev", &v.if_b]);
            srv.exec(&[
                "ip",
                "neigh",
                "replace",
                &c.to_string(),
                "lladdr",
                &v.mac_b,
                "dev",
                &v.if_a,
                "nud",
                "permanent",
            ]);
        }
        Web {
            srv,
            cli,
            v,
            clients,
        }
    }

    fn policy(&self, mode: &str) -> String {
        format!(
            r#"
[[rule_set]]
name = "web"
interfaces = ["{iface}"]
kind = "stateful"
mode = "{mode}"
default_ingress = "drop"
default_egress = "accept"

[[rule_set.rule]]
id = {ALLOWED_RULE}
direction = "ingress"
protocol = "tcp"
ports = "80"
peer = "{allowed}/32"
action = "accept"
"#,
            iface = self.v.if_a,
            allowed = self.clients[0],
        )
    }

    fn server(&self) -> SocketAddr {
        v4(self.v.v4_a, 80)
    }

    /// Client->server stream of a connection (seen arriving at the server).
    fn c2s(&self, local: SocketAddr) -> Filter {
        Filter::ok()
            .dir("in")
            .proto(6)
            .src(local.ip())
            .sport(local.port())
            .dst(self.v.v4_a)
            .dport(80)
    }

    /// Server->client stream of a connection.
    fn s2c(&self, local: SocketAddr) -> Filter {
        Filter::ok()
            .dir("out")
            .proto(6)
            .src(self.v.v4_a)
            .sport(80)
            .dst(local.ip())
            .dport(local.port())
    }

    /// Connects from every client address in parallel.
    fn connect_all(
        &self,
        addrs: &[Ipv4Addr],
        timeout: Duration,
        payload: usize,
    ) -> Vec<ClientOutcome> {
        let handles: Vec<_> = addrs
            .iter()
            .map(|a| {
                let (ns, src, dst) = (self.cli.name().to_string(), v4(*a, 0), self.server());
                thread::spawn(move || tcp_exchange_from(&ns, src, dst, timeout, payload))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    }
}

fn served_by(served: &[ServedConn], local: SocketAddr) -> Option<ServedConn> {
    served.iter().copied().find(|s| s.peer == local)
}

/// Bytes of a client->server TCP stream: payload + 40 per segment + the SYN's 12
/// option bytes (no timestamps).
fn tcp_bytes(segs: u32, payload: u64) -> u64 {
    payload + 40 * segs as u64 + 12
}

#[test]
fn web_server_enforce_one_allowed_four_rejected() {
    require_root();
    let w = Web::new("wbe", 1);
    let policy = PolicyFile::new("wbe", &w.policy("enforce"));
    let server = TcpServer::bind(w.srv.name(), w.server());
    let agent = Agent::start(w.srv.name(), &agent_args(&w.v.if_a, &policy, "10s"));

    const PAYLOAD: usize = 64 * 1024;
    let srv0 = tcp_segs(w.srv.name());
    let s0 = tcp_segs(w.cli.name());
    let allowed = w.connect_all(&w.clients[..1], Duration::from_secs(3), PAYLOAD)[0];
    let s1 = tcp_segs(w.cli.name());
    // 2.5 s: with tcp_syn_linear_timeouts (default 4) SYNs leave at 0, 1, 2 s, with
    // classic backoff at 0, 1 s; either way the next one is 0.5 s away when we close.
    let rejected = w.connect_all(&w.clients[1..], Duration::from_millis(2500), PAYLOAD);
    let s2 = tcp_segs(w.cli.name());
    let srv1 = tcp_segs(w.srv.name());
    thread::sleep(Duration::from_millis(200));
    let recs = agent.stop();
    let served = server.finish();
    check_shapes(&recs);
    eprintln!("allowed: {allowed:?}\nrejected: {rejected:#?}\nserved: {served:#?}");

    let mut c = Checks::default();
    // The traffic itself: the allowed client got through, the others did not.
    assert!(
        allowed.connected,
        "the allowed client could not connect: {allowed:?}"
    );
    assert_eq!(served.len(), 1, "connections served: {served:?}");
    let srv_side = served_by(&served, allowed.local).expect("allowed connection served");
    assert_eq!(srv_side.received, PAYLOAD as u64);
    c.eq(
        "allowed client's segments: TCP_INFO vs namespace OutSegs+RetransSegs",
        allowed.info.segs_out as i64,
        s1 - s0,
    );
    c.eq(
        "server's segments: TCP_INFO (+ SYN-ACK) vs namespace OutSegs+RetransSegs",
        srv_side.segments() as i64,
        srv1 - srv0,
    );
    let rejected_segs: u32 = rejected.iter().map(|r| r.info.segs_out).sum();
    c.eq(
        "rejected clients' SYNs: TCP_INFO vs namespace OutSegs+RetransSegs",
        rejected_segs as i64,
        s2 - s1,
    );

    let mut known = Vec::new();
    // Rejected clients: each SYN (and retransmission) is one REJECT packet of 52 bytes.
    for r in &rejected {
        assert!(!r.connected, "a rejected client connected: {r:?}");
        let syns = r.info.segs_out as u64;
        assert!(syns >= 2, "expected a SYN and retransmissions: {r:?}");
        let f = w.c2s(r.local);
        c.eq(
            format!(
                "verdicts of rejected {} -> :80 (SYNs sent: {syns})",
                r.local
            ),
            verdicts(&recs, &f),
            one("REJECT", "default", syns, 52 * syns),
        );
        c.eq(
            format!("tcp-flags of rejected {}", r.local),
            flags(&recs, &f),
            2,
        );
        let back = w.s2c(r.local);
        c.eq(
            format!(
                "server -> rejected {} (SYN dropped before the server)",
                r.local
            ),
            verdicts(&recs, &back),
            BTreeMap::new(),
        );
        known.extend([f, back]);
    }

    // The allowed client: every packet ACCEPT, both directions exact.
    let f = w.c2s(allowed.local);
    let segs = allowed.info.segs_out;
    let got = verdicts(&recs, &f);
    c.eq(
        format!(
            "packets/bytes of allowed {} -> :80 (all verdicts)",
            allowed.local
        ),
        total(&got),
        (segs as u64, tcp_bytes(segs, allowed.info.bytes_sent)),
    );
    c.that(
        got.keys().all(|(a, _)| a == "ACCEPT"),
        format!("allowed client's stream has a REJECT: {got:?}"),
    );
    let back = w.s2c(allowed.local);
    let ssegs = srv_side.segments();
    c.eq(
        format!("server -> allowed {}", allowed.local),
        verdicts(&recs, &back),
        one(
            "ACCEPT",
            "tracked",
            ssegs as u64,
            tcp_bytes(ssegs, srv_side.info.bytes_sent),
        ),
    );
    // The rule that let the connection in is what an operator looks for.
    c.eq(
        format!("rule-id of allowed {} -> :80", allowed.local),
        got.keys().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![ALLOWED_RULE.to_string()],
    );
    known.extend([f, back]);
    c.eq("stray records", strays(&recs, &known), vec![]);
    c.finish(&recs);
}

#[test]
fn web_server_audit_marks_rejected_streams() {
    require_root();
    let w = Web::new("wba", 2);
    let policy = PolicyFile::new("wba", &w.policy("audit"));
    let server = TcpServer::bind(w.srv.name(), w.server());
    let agent = Agent::start(w.srv.name(), &agent_args(&w.v.if_a, &policy, "10s"));

    const PAYLOAD: usize = 32 * 1024;
    let srv0 = tcp_segs(w.srv.name());
    let s0 = tcp_segs(w.cli.name());
    let outcomes = w.connect_all(&w.clients, Duration::from_secs(3), PAYLOAD);
    let s1 = tcp_segs(w.cli.name());
    let srv1 = tcp_segs(w.srv.name());
    thread::sleep(Duration::from_millis(200));
    let recs = agent.stop();
    let served = server.finish();
    check_shapes(&recs);
    eprintln!("clients: {outcomes:#?}\nserved: {served:#?}");

    // Audit: nothing dropped, all five transfers complete.
    for o in &outcomes {
        assert!(o.connected, "audit mode dropped a connection: {o:?}");
    }
    assert_eq!(served.len(), 5, "connections served: {served:?}");
    let mut c = Checks::default();
    let total_segs: u32 = outcomes.iter().map(|o| o.info.segs_out).sum();
    c.eq(
        "clients' segments: TCP_INFO vs namespace OutSegs+RetransSegs",
        total_segs as i64,
        s1 - s0,
    );
    let served_segs: u32 = served.iter().map(ServedConn::segments).sum();
    c.eq(
        "server's segments: TCP_INFO (+ SYN-ACKs) vs namespace OutSegs+RetransSegs",
        served_segs as i64,
        srv1 - srv0,
    );
    let mut known = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let srv_side = served_by(&served, o.local).expect("connection served");
        c.eq(
            format!("bytes received from {}", o.local),
            srv_side.received,
            PAYLOAD as u64,
        );
        let segs = o.info.segs_out;
        let want = (segs as u64, tcp_bytes(segs, o.info.bytes_sent));
        let f = w.c2s(o.local);
        let got = verdicts(&recs, &f);
        c.eq(
            format!("packets/bytes of {} -> :80 (all verdicts)", o.local),
            total(&got),
            want,
        );
        if i > 0 {
            c.eq(
                format!("verdicts of rejected {} -> :80 (audit)", o.local),
                got,
                one("REJECT", "default", want.0, want.1),
            );
        } else {
            c.that(
                got.keys().all(|(a, _)| a == "ACCEPT"),
                format!("allowed client's stream has a REJECT: {got:?}"),
            );
        }
        // Server -> client: every segment counted once, whatever the verdict.
        let back = w.s2c(o.local);
        let ssegs = srv_side.segments();
        c.eq(
            format!("packets/bytes of server -> {} (all verdicts)", o.local),
            total(&verdicts(&recs, &back)),
            (ssegs as u64, tcp_bytes(ssegs, srv_side.info.bytes_sent)),
        );
        known.extend([f, back]);
    }
    c.eq("stray records", strays(&recs, &known), vec![]);
    c.finish(&recs);
}

// ---------------------------------------------------------------------------------
// 3: stateful versus stateless
// ---------------------------------------------------------------------------------

const OUT_RULE: u32 = 7;

fn egress_only_policy(iface: &str, kind: &str, peer: Ipv4Addr) -> String {
    format!(
        r#"
[[rule_set]]
name = "out-only"
interfaces = ["{iface}"]
kind = "{kind}"
mode = "enforce"
default_ingress = "drop"
default_egress = "drop"

[[rule_set.rule]]
id = {OUT_RULE}
direction = "egress"
protocol = "udp"
ports = "5001"
peer = "{peer}/32"
action = "accept"
"#
    )
}

/// A (agent, requester, 10.200.idx.1:40000) sends 10 requests of 100 bytes to
/// B:5001, which answers each with 200 bytes. Returns the records and the number of
/// replies A received.
fn request_response(kind: &str, tag: &str, idx: u8) -> (VethPair, Vec<Record>, u64) {
    let a = Netns::new(&format!("{tag}-a"));
    let b = Netns::new(&format!("{tag}-b"));
    let v = VethPair::new(&a, &b, tag, idx);
    let policy = PolicyFile::new(tag, &egress_only_policy(&v.if_a, kind, v.v4_b));
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    let req = udp_socket(a.name(), v4(v.v4_a, 40000), Duration::from_millis(300));
    let srv = udp_socket(b.name(), v4(v.v4_b, 5001), Duration::from_secs(2));
    let mut buf = [0u8; 2048];
    for i in 0..10u8 {
        req.send_to(&[i; 100], v4(v.v4_b, 5001)).unwrap();
        let (n, from) = srv
            .recv_from(&mut buf)
            .expect("request lost: egress is allowed");
        assert_eq!((n, from), (100, v4(v.v4_a, 40000)));
        assert_eq!(srv.send_to(&[i; 200], from).unwrap(), 200);
    }
    let replies = drain(&req);
    let recs = agent.stop();
    check_shapes(&recs);
    (v, recs, replies)
}

fn request_filters(v: &VethPair) -> (Filter, Filter) {
    let out = Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .sport(40000)
        .dst(v.v4_b)
        .dport(5001);
    let back = Filter::ok()
        .dir("in")
        .proto(17)
        .src(v.v4_b)
        .sport(5001)
        .dst(v.v4_a)
        .dport(40000);
    (out, back)
}

#[test]
fn stateful_egress_rule_lets_replies_in() {
    require_root();
    let (v, recs, replies) = request_response("stateful", "sful", 1);
    let (out, back) = request_filters(&v);
    let mut c = Checks::default();
    c.eq("replies received by A", replies, 10);
    c.eq(
        "requests A -> B:5001",
        verdicts(&recs, &out),
        one("ACCEPT", &OUT_RULE.to_string(), 10, 10 * 128),
    );
    c.eq(
        "replies B:5001 -> A",
        verdicts(&recs, &back),
        one("ACCEPT", "tracked", 10, 10 * 228),
    );
    c.eq("stray records", strays(&recs, &[out, back]), vec![]);
    c.finish(&recs);
}

#[test]
fn stateless_egress_rule_drops_replies() {
    require_root();
    let (v, recs, replies) = request_response("stateless", "sles", 1);
    let (out, back) = request_filters(&v);
    let mut c = Checks::default();
    c.eq("replies received by A", replies, 0);
    c.eq(
        "requests A -> B:5001",
        verdicts(&recs, &out),
        one("ACCEPT", &OUT_RULE.to_string(), 10, 10 * 128),
    );
    c.eq(
        "replies B:5001 -> A",
        verdicts(&recs, &back),
        one("REJECT", "default", 10, 10 * 228),
    );
    c.eq("stray records", strays(&recs, &[out, back]), vec![]);
    c.finish(&recs);
}

/// A reload that changes nothing must change no verdict: the replies of a connection
/// the stateful rule set accepted before the reload are still accepted after it.
#[test]
fn stateful_reload_keeps_established_replies() {
    require_root();
    let a = Netns::new("ctrl-a");
    let b = Netns::new("ctrl-b");
    let v = VethPair::new(&a, &b, "ctr", 1);
    let text = egress_only_policy(&v.if_a, "stateful", v.v4_b);
    let policy = PolicyFile::new("ctrl", &text);
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    let req = udp_socket(a.name(), v4(v.v4_a, 40000), Duration::from_millis(300));
    let srv = udp_socket(b.name(), v4(v.v4_b, 5001), Duration::from_secs(2));
    let mut buf = [0u8; 2048];
    req.send_to(&[1; 100], v4(v.v4_b, 5001)).unwrap();
    let (_, from) = srv.recv_from(&mut buf).expect("request lost");
    srv.send_to(&[1; 200], from).unwrap();
    let before = drain(&req);
    // Same file, same rules.
    policy.write(&text);
    let log = agent.reload();
    assert!(log.contains("policy reloaded"), "reload failed:\n{log}");
    // The server answers again on the same connection (a second reply, as a DNS or
    // QUIC server may, or a TCP server's next segment).
    srv.send_to(&[2; 200], from).unwrap();
    let after = drain(&req);
    let recs = agent.stop();
    check_shapes(&recs);
    let (out, back) = request_filters(&v);
    let mut c = Checks::default();
    c.eq("replies received before the reload", before, 1);
    c.eq("replies received after reloading the same policy", after, 1);
    c.eq(
        "requests A -> B:5001",
        verdicts(&recs, &out),
        one("ACCEPT", &OUT_RULE.to_string(), 1, 128),
    );
    c.eq(
        "replies B:5001 -> A",
        verdicts(&recs, &back),
        one("ACCEPT", "tracked", 2, 2 * 228),
    );
    c.finish(&recs);
}

/// Priorities and overlapping CIDRs: the first rule in priority order (not file
/// order) whose peer, protocol and port match decides, whatever the prefix lengths.
#[test]
fn priority_order_and_overlapping_cidrs() {
    require_root();
    let a = Netns::new("prio-a");
    let b = Netns::new("prio-b");
    let v = VethPair::new(&a, &b, "pri", 1);
    let b3 = Ipv4Addr::new(10, 200, 1, 3);
    b.exec(&["ip", "addr", "add", &format!("{b3}/24"), "dev", &v.if_b]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        &b3.to_string(),
        "lladdr",
        &v.mac_b,
        "dev",
        &v.if_a,
        "nud",
        "permanent",
    ]);
    let text = format!(
        r#"
[[rule_set]]
name = "prio"
interfaces = ["{iface}"]
kind = "stateless"
mode = "audit"

[[rule_set.rule]]
id = 1
priority = 20
direction = "ingress"
protocol = "udp"
ports = "5001"
peer = "10.200.1.0/24"
action = "accept"

[[rule_set.rule]]
id = 2
priority = 10
direction = "ingress"
protocol = "udp"
ports = "5001-5002"
peer = "{b2}/32"
action = "drop"

[[rule_set.rule]]
id = 3
priority = 30
direction = "ingress"
protocol = "all"
peer = "any"
action = "accept"

[[rule_set.rule]]
id = 4
priority = 5
direction = "ingress"
protocol = 17
ports = "5003"
peer = "{b3}/32"
action = "drop"
"#,
        iface = v.if_a,
        b2 = v.v4_b,
    );
    let policy = PolicyFile::new("prio", &text);
    let sinks: Vec<UdpSink> = (5001..=5003)
        .map(|p| UdpSink::bind(a.name(), v4(v.v4_a, p)))
        .collect();
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    // (source, destination port, expected action, expected rule)
    let cases = [
        (v.v4_b, 5001, "REJECT", "2"),
        (v.v4_b, 5002, "REJECT", "2"),
        (v.v4_b, 5003, "ACCEPT", "3"),
        (b3, 5001, "ACCEPT", "1"),
        (b3, 5002, "ACCEPT", "3"),
        (b3, 5003, "REJECT", "4"),
    ];
    for (src, port, _, _) in cases {
        assert_eq!(
            udp_send(b.name(), v4(src, 40000), v4(v.v4_a, port), &[50; 3], None),
            3
        );
    }
    for s in &sinks {
        assert_eq!(
            s.wait_for(6, Duration::from_secs(5)),
            6,
            "audit drops nothing"
        );
    }
    let recs = agent.stop();
    check_shapes(&recs);
    let mut c = Checks::default();
    let mut known = Vec::new();
    for (src, port, action, rule) in cases {
        let f = Filter::ok()
            .dir("in")
            .proto(17)
            .src(src)
            .sport(40000)
            .dst(v.v4_a)
            .dport(port);
        c.eq(
            format!("{src} -> :{port}"),
            verdicts(&recs, &f),
            one(action, rule, 3, 3 * 78),
        );
        known.push(f);
    }
    c.eq("stray records", strays(&recs, &known), vec![]);
    c.finish(&recs);
}

/// Packets of the OK records matching `f`, per action.
fn actions(records: &[Record], f: &Filter) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for ((action, _), (p, _)) in verdicts(records, f) {
        *m.entry(action).or_insert(0) += p;
    }
    m
}

/// A reload that revokes the rule which accepted an inbound connection: from the next
/// packet on the connection is rejected in both directions, and a packet the server
/// sends on it must not re-open it.
#[test]
fn stateful_reload_revokes_inbound_connection() {
    require_root();
    let a = Netns::new("rvk-a");
    let b = Netns::new("rvk-b");
    let v = VethPair::new(&a, &b, "rvk", 1);
    let accept = udp_in_policy(&v.if_a, "enforce", v.v4_b, 10, "accept")
        .replace("kind = \"stateless\"", "kind = \"stateful\"");
    assert!(accept.contains("stateful"));
    let policy = PolicyFile::new("rvk", &accept);
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    let srv = udp_socket(a.name(), v4(v.v4_a, 5001), Duration::from_millis(300));
    let cli = udp_socket(b.name(), v4(v.v4_b, 40000), Duration::from_millis(300));
    let (to_srv, to_cli) = (v4(v.v4_a, 5001), v4(v.v4_b, 40000));
    cli.send_to(&[1; 100], to_srv).unwrap();
    let srv_got_before = drain(&srv);
    srv.send_to(&[1; 200], to_cli).unwrap();
    let cli_got_before = drain(&cli);
    policy.write(
        &accept
            .replace("id = 10", "id = 20")
            .replace("\"accept\"", "\"drop\""),
    );
    let log = agent.reload();
    assert!(log.contains("policy reloaded"), "reload failed:\n{log}");
    cli.send_to(&[2; 100], to_srv).unwrap();
    let srv_got_req2 = drain(&srv);
    // The server's late answer on the revoked connection, then the client again.
    srv.send_to(&[2; 200], to_cli).unwrap();
    let cli_got_after = drain(&cli);
    cli.send_to(&[3; 100], to_srv).unwrap();
    let srv_got_req3 = drain(&srv);
    let recs = agent.stop();
    check_shapes(&recs);
    let inb = Filter::ok()
        .dir("in")
        .proto(17)
        .src(v.v4_b)
        .sport(40000)
        .dst(v.v4_a)
        .dport(5001);
    let out = Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .sport(5001)
        .dst(v.v4_b)
        .dport(40000);
    let mut c = Checks::default();
    c.eq(
        "delivered before the reload (server, client)",
        (srv_got_before, cli_got_before),
        (1, 1),
    );
    c.eq(
        "client's 2nd datagram delivered after the revoke",
        srv_got_req2,
        0,
    );
    c.eq(
        "server's late answer delivered after the revoke",
        cli_got_after,
        0,
    );
    c.eq(
        "client's 3rd datagram delivered after the server's answer",
        srv_got_req3,
        0,
    );
    let mut want_in = one("ACCEPT", "10", 1, 128);
    want_in.insert(("REJECT".into(), "20".into()), (2, 256));
    c.eq("client -> server verdicts", verdicts(&recs, &inb), want_in);
    c.eq(
        "server -> client packets per action",
        actions(&recs, &out),
        BTreeMap::from([("ACCEPT".to_string(), 1), ("REJECT".to_string(), 1)]),
    );
    c.finish(&recs);
}

// ---------------------------------------------------------------------------------
// 4: reloads on SIGHUP
// ---------------------------------------------------------------------------------

fn udp_in_policy(iface: &str, mode: &str, peer: Ipv4Addr, id: u32, action: &str) -> String {
    format!(
        r#"
[[rule_set]]
name = "rx"
interfaces = ["{iface}"]
kind = "stateless"
mode = "{mode}"
default_ingress = "drop"

[[rule_set.rule]]
id = {id}
direction = "ingress"
protocol = "udp"
ports = "5001"
peer = "{peer}/32"
action = "{action}"
"#
    )
}

/// B sends 20,000 paced datagrams of 64 bytes over 4 s to A:5001; halfway the policy
/// file is rewritten from accept (rule 10) to drop (rule 20) and the agent gets SIGHUP.
fn reload_under_traffic(mode: &str, tag: &str) {
    require_root();
    let a = Netns::new(&format!("{tag}-a"));
    let b = Netns::new(&format!("{tag}-b"));
    let v = VethPair::new(&a, &b, tag, 1);
    let policy = PolicyFile::new(tag, &udp_in_policy(&v.if_a, mode, v.v4_b, 10, "accept"));
    let sink = UdpSink::bind(a.name(), v4(v.v4_a, 5001));
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "1s"));
    const N: usize = 20_000;
    let snmp0 = read_snmp(a.name());
    let (bns, src, dst) = (b.name().to_string(), v4(v.v4_b, 40000), v4(v.v4_a, 5001));
    let sender =
        thread::spawn(move || udp_send(&bns, src, dst, &[64; N], Some(Duration::from_secs(4))));
    thread::sleep(Duration::from_secs(2));
    policy.write(&udp_in_policy(&v.if_a, mode, v.v4_b, 20, "drop"));
    let log = agent.reload();
    assert!(log.contains("policy reloaded"), "reload failed:\n{log}");
    let sent = sender.join().expect("sender panicked");
    assert_eq!(sent, N);
    let received = if mode == "audit" {
        sink.wait_for(N as u64, Duration::from_secs(5))
    } else {
        thread::sleep(Duration::from_millis(300));
        sink.received()
    };
    let snmp1 = read_snmp(a.name());
    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    // Datagrams that reached the socket but found its buffer full never reach recv().
    let overflow = (snmp_counter(&snmp1, "Udp:RcvbufErrors")
        - snmp_counter(&snmp0, "Udp:RcvbufErrors")) as u64;
    let delivered = received + overflow;
    eprintln!("received {received}, receive-buffer overflows {overflow}");

    let f = Filter::ok()
        .dir("in")
        .proto(17)
        .src(v.v4_b)
        .sport(40000)
        .dst(v.v4_a)
        .dport(5001);
    let got = verdicts(&recs, &f);
    let acc = got
        .get(&("ACCEPT".into(), "10".into()))
        .copied()
        .unwrap_or_default();
    let rej = got
        .get(&("REJECT".into(), "20".into()))
        .copied()
        .unwrap_or_default();
    let mut c = Checks::default();
    c.eq("verdicts other than ACCEPT/10 and REJECT/20", got.len(), 2);
    c.eq("ACCEPT + REJECT packets", acc.0 + rej.0, N as u64);
    c.eq("ACCEPT + REJECT bytes", acc.1 + rej.1, (N * 92) as u64);
    c.that(
        acc.0 > 0 && rej.0 > 0,
        format!("both verdicts expected: {got:?}"),
    );
    if mode == "audit" {
        c.eq(
            "datagrams delivered (audit drops nothing)",
            delivered,
            N as u64,
        );
    } else {
        c.eq(
            "datagrams delivered == ACCEPT packets (enforce)",
            delivered,
            acc.0,
        );
    }
    // Verdicts change once: no ACCEPT in a window after the first REJECT window.
    let ends = |action: &str| -> Vec<u64> {
        Filter::ok()
            .select(&recs)
            .into_iter()
            .filter(|r| f.matches(r) && r.action() == action)
            .map(Record::end)
            .collect()
    };
    let (acc_ends, rej_ends) = (ends("ACCEPT"), ends("REJECT"));
    if let (Some(last_acc), Some(first_rej)) = (acc_ends.iter().max(), rej_ends.iter().min()) {
        c.that(
            last_acc <= first_rej,
            format!("ACCEPT after the switch to REJECT: ACCEPT windows {acc_ends:?}, REJECT windows {rej_ends:?}"),
        );
    }
    c.eq("stray records", strays(&recs, &[f]), vec![]);
    c.finish(&recs);
}

#[test]
fn reload_under_traffic_audit_totals_exact() {
    reload_under_traffic("audit", "rla");
}

#[test]
fn reload_under_traffic_enforce_totals_exact() {
    reload_under_traffic("enforce", "rle");
}

#[test]
fn broken_reload_keeps_old_policy() {
    require_root();
    let a = Netns::new("rlb-a");
    let b = Netns::new("rlb-b");
    let v = VethPair::new(&a, &b, "rlb", 1);
    let good = udp_in_policy(&v.if_a, "enforce", v.v4_b, 10, "accept");
    let policy = PolicyFile::new("rlb", &good);
    let sink = UdpSink::bind(a.name(), v4(v.v4_a, 5001));
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    let send = |n: usize| {
        udp_send(
            b.name(),
            v4(v.v4_b, 40000),
            v4(v.v4_a, 5001),
            &vec![64; n],
            None,
        )
    };
    assert_eq!(send(50), 50);
    assert_eq!(sink.wait_for(50, Duration::from_secs(5)), 50);

    // A reversed port range on a rule that would drop the traffic.
    let reversed =
        udp_in_policy(&v.if_a, "enforce", v.v4_b, 20, "drop").replace("\"5001\"", "\"90-80\"");
    policy.write(&reversed);
    let log = agent.reload();
    assert!(
        log.contains("rule set \"rx\", rule 1 (ports)"),
        "the error does not name the rule set, rule and field:\n{log}"
    );
    assert!(
        log.contains("reversed"),
        "the error does not say what is wrong:\n{log}"
    );
    assert!(log.contains("previous policy stays in force"), "{log}");
    assert!(!log.contains("policy reloaded"), "{log}");
    assert_eq!(send(50), 50);
    assert_eq!(sink.wait_for(100, Duration::from_secs(5)), 100);

    // A rule set bound to an interface the agent does not capture.
    let other = udp_in_policy(&v.if_a, "enforce", v.v4_b, 20, "drop").replace(
        &format!("[\"{}\"]", v.if_a),
        &format!("[\"{}\", \"{}\"]", v.if_a, "flnosuch9"),
    );
    policy.write(&other);
    let log = agent.reload();
    assert!(
        log.contains("flnosuch9") && log.contains("not captured"),
        "{log}"
    );
    assert!(log.contains("previous policy stays in force"), "{log}");
    assert_eq!(send(50), 50);
    assert_eq!(sink.wait_for(150, Duration::from_secs(5)), 150);

    let recs = agent.stop();
    sink.finish();
    check_shapes(&recs);
    let f = Filter::ok()
        .dir("in")
        .proto(17)
        .src(v.v4_b)
        .sport(40000)
        .dst(v.v4_a)
        .dport(5001);
    let mut c = Checks::default();
    c.eq(
        "verdicts",
        verdicts(&recs, &f),
        one("ACCEPT", "10", 150, 150 * 92),
    );
    c.eq("stray records", strays(&recs, &[f]), vec![]);
    c.finish(&recs);
}

// ---------------------------------------------------------------------------------
// 5: data transfer type
// ---------------------------------------------------------------------------------

#[test]
fn transfer_type_filters_records() {
    require_root();
    let a = Netns::new("xfer-a");
    let b = Netns::new("xfer-b");
    let v = VethPair::new(&a, &b, "xfr", 1);
    let policy = PolicyFile::new(
        "xfer",
        &udp_in_policy(&v.if_a, "audit", v.v4_b, 10, "accept"),
    );
    let sink1 = UdpSink::bind(a.name(), v4(v.v4_a, 5001));
    let sink2 = UdpSink::bind(a.name(), v4(v.v4_a, 5002));
    // Three agents on the same interface (TCX runs them all): one traffic run, three
    // views of it.
    let agents: Vec<(&str, Agent)> = ["all", "allow", "reject"]
        .into_iter()
        .map(|t| {
            let mut args = agent_args(&v.if_a, &policy, "10s");
            args.extend(["--transfer-type", t]);
            (t, Agent::start(a.name(), &args))
        })
        .collect();
    let src = v4(v.v4_b, 40000);
    assert_eq!(
        udp_send(b.name(), src, v4(v.v4_a, 5001), &[100; 5], None),
        5
    );
    assert_eq!(
        udp_send(b.name(), src, v4(v.v4_a, 5002), &[200; 7], None),
        7
    );
    assert_eq!(sink1.wait_for(5, Duration::from_secs(5)), 5);
    assert_eq!(sink2.wait_for(7, Duration::from_secs(5)), 7);
    let base = Filter::ok()
        .dir("in")
        .proto(17)
        .src(v.v4_b)
        .sport(40000)
        .dst(v.v4_a);
    let (acc, rej) = (base.clone().dport(5001), base.dport(5002));
    let mut c = Checks::default();
    let mut all = Vec::new();
    for (t, agent) in agents {
        let recs = agent.stop();
        check_shapes(&recs);
        let (want_acc, want_rej) = match t {
            "all" => (
                one("ACCEPT", "10", 5, 640),
                one("REJECT", "default", 7, 7 * 228),
            ),
            "allow" => (one("ACCEPT", "10", 5, 640), BTreeMap::new()),
            _ => (BTreeMap::new(), one("REJECT", "default", 7, 7 * 228)),
        };
        c.eq(
            format!("--transfer-type {t}: to :5001"),
            verdicts(&recs, &acc),
            want_acc,
        );
        c.eq(
            format!("--transfer-type {t}: to :5002"),
            verdicts(&recs, &rej),
            want_rej,
        );
        c.eq(
            format!("--transfer-type {t}: strays"),
            strays(&recs, &[acc.clone(), rej.clone()]),
            vec![],
        );
        let hidden: Vec<&Record> = Filter::ok()
            .select(&recs)
            .into_iter()
            .filter(|r| match t {
                "allow" => r.action() != "ACCEPT",
                "reject" => r.action() != "REJECT",
                _ => false,
            })
            .collect();
        c.that(
            hidden.is_empty(),
            format!("--transfer-type {t} emitted {hidden:?}"),
        );
        all.extend(recs);
    }
    sink1.finish();
    sink2.finish();
    c.finish(&all);
}

// ---------------------------------------------------------------------------------
// 6: bad policy input at start-up
// ---------------------------------------------------------------------------------

#[test]
fn bad_policy_at_startup_exits_2_naming_rule_and_field() {
    require_root();
    let ns = Netns::new("pbad");
    // Two interfaces (a veth pair inside the namespace): the agent captures the
    // first; one case names the second.
    let (d0, d1) = (
        flowlog_tests::netns::ifname("pbd", 0, 'd'),
        flowlog_tests::netns::ifname("pbd", 1, 'd'),
    );
    ns.exec(&[
        "ip", "link", "add", &d0, "type", "veth", "peer", "name", &d1,
    ]);
    for d in [&d0, &d1] {
        ns.exec(&["ip", "link", "set", d, "up"]);
    }
    let set = |iface: &str, rules: &str| {
        format!(
            "[[rule_set]]\nname = \"web\"\ninterfaces = [\"{iface}\"]\nmode = \"enforce\"\n\n\
             [[rule_set.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nports = \"443\"\naction = \"accept\"\n\n{rules}"
        )
    };
    let rule = |extra: &str| {
        format!("[[rule_set.rule]]\ndirection = \"ingress\"\naction = \"accept\"\n{extra}\n")
    };
    let many: String = (0..65).map(|_| rule("")).collect();
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "bad CIDR",
            set(
                &d0,
                &rule("protocol = \"tcp\"\nports = \"80\"\npeer = \"10.0.0.300/24\""),
            ),
            vec![
                "rule set \"web\", rule 2 (peer)".into(),
                "10.0.0.300/24".into(),
            ],
        ),
        (
            "reversed port range",
            set(&d0, &rule("protocol = \"tcp\"\nports = \"90-80\"")),
            vec![
                "rule set \"web\", rule 2 (ports)".into(),
                "90-80".into(),
                "reversed".into(),
            ],
        ),
        (
            "unknown protocol",
            set(&d0, &rule("protocol = \"tcpp\"")),
            vec![
                "rule set \"web\", rule 2 (protocol)".into(),
                "unknown protocol \"tcpp\"".into(),
            ],
        ),
        (
            "65 rules",
            format!("[[rule_set]]\nname = \"big\"\ninterfaces = [\"{d0}\"]\n{many}"),
            vec![
                "rule set \"big\"".into(),
                "65 rules, over the limit of 64".into(),
            ],
        ),
        (
            "interface not captured",
            set(&d1, ""),
            vec![
                format!("rule set \"web\" names interface \"{d1}\""),
                "not captured".into(),
                format!("--interface {d1}"),
            ],
        ),
    ];
    let mut c = Checks::default();
    for (what, text, wants) in cases {
        let f = PolicyFile::new("pbad", &text);
        let r = run_to_exit(
            ns.name(),
            &[
                "run",
                "--interface",
                &d0,
                "--policy",
                f.arg(),
                "--window",
                "2s",
            ],
        );
        c.eq(
            format!("{what}: exit code (stderr: {})", r.stderr.trim()),
            r.code(),
            Some(2),
        );
        for want in wants {
            c.that(
                r.stderr.contains(&want),
                format!("{what}: stderr lacks {want:?}: {}", r.stderr.trim()),
            );
        }
        c.eq(
            format!("{what}: stdout"),
            r.stdout.trim().to_string(),
            String::new(),
        );
    }
    c.finish(&[]);
}

// ---------------------------------------------------------------------------------
// 7: IPv6
// ---------------------------------------------------------------------------------

#[test]
fn ipv6_rule_accepts_its_prefix_only() {
    require_root();
    let a = Netns::new("p6-a");
    let b = Netns::new("p6-b");
    let v = VethPair::dual_stack(&a, &b, "p6", 7);
    let (a6, b6) = (v.v6a(), v.v6b());
    // A second prefix on the link, outside the rule's /64.
    let (a6x, b6x): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("fd01:7::1".parse().unwrap(), "fd01:7::2".parse().unwrap());
    for (ns, ifn, own, peer, peer_mac) in [
        (&a, &v.if_a, a6x, b6x, &v.mac_b),
        (&b, &v.if_b, b6x, a6x, &v.mac_a),
    ] {
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{own}/64"),
            "dev",
            ifn,
            "nodad",
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            &peer.to_string(),
            "lladdr",
            peer_mac,
            "dev",
            ifn,
            "nud",
            "permanent",
        ]);
    }
    let text = format!(
        r#"
[[rule_set]]
name = "v6"
interfaces = ["{}"]
kind = "stateful"
mode = "enforce"
default_ingress = "drop"

[[rule_set.rule]]
id = 60
direction = "ingress"
protocol = "icmpv6"
peer = "fd00:7::/64"
action = "accept"
"#,
        v.if_a
    );
    let policy = PolicyFile::new("p6", &text);
    let agent = Agent::start(a.name(), &agent_args(&v.if_a, &policy, "10s"));
    let ok = ping(b.name(), IpAddr::V6(a6), 5, 56, Duration::from_millis(10));
    let blocked = ping(b.name(), IpAddr::V6(a6x), 5, 56, Duration::from_millis(10));
    let recs = agent.stop();
    check_shapes(&recs);
    let mut c = Checks::default();
    c.eq("replies from inside the /64", ok, 5);
    c.eq("replies from outside the /64", blocked, 0);
    let icmp = |dir: &str, src, dst| {
        Filter::ok()
            .dir(dir)
            .proto(58)
            .src(src)
            .dst(dst)
            .sport("-")
            .dport("-")
    };
    let (req, rep) = (icmp("in", b6, a6), icmp("out", a6, b6));
    let (xreq, xrep) = (icmp("in", b6x, a6x), icmp("out", a6x, b6x));
    c.eq(
        "echo requests from fd00:7::2",
        verdicts(&recs, &req),
        one("ACCEPT", "60", 5, 520),
    );
    c.eq(
        "echo replies to fd00:7::2",
        verdicts(&recs, &rep),
        one("ACCEPT", "tracked", 5, 520),
    );
    c.eq(
        "echo requests from fd01:7::2",
        verdicts(&recs, &xreq),
        one("REJECT", "default", 5, 520),
    );
    c.eq(
        "echo replies to fd01:7::2",
        verdicts(&recs, &xrep),
        BTreeMap::new(),
    );
    // Nothing else between the global addresses (link-local MLD/RS may appear).
    let ours: Vec<Record> = Filter::ok()
        .select(&recs)
        .into_iter()
        .filter(|r| {
            let ends = [r.field("srcaddr"), r.field("dstaddr")];
            [a6, b6, a6x, b6x]
                .iter()
                .any(|x| ends.contains(&x.to_string().as_str()))
        })
        .cloned()
        .collect();
    c.eq(
        "stray records",
        strays(&ours, &[req, rep, xreq, xrep]),
        vec![],
    );
    c.finish(&recs);
}
