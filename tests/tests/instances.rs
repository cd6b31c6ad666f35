//! Flow log instances on the real kernel: vSwitch and VPC scopes that follow
//! interfaces, several instances on one interface, the lifecycle through the control
//! socket, traffic_path classification in the kernel, IP versions, restart, and bad
//! requests. Exact counts throughout.
use std::{collections::BTreeMap, net::Ipv4Addr, thread, time::Duration};

use flowlog_tests::{
    control::Control,
    known,
    netns::{ifname, run},
    read_records,
    record::Record,
    require_root, scrape, totals,
    traffic::{udp_send, v4, v6, UdpSink},
    Agent, Filter, Netns, VethPair,
};

/// Packets and bytes of the known burst's stream from `src` to `dst` on `eni` in
/// direction `dir`.
fn burst_totals(
    records: &[Record],
    eni: &str,
    dir: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> (u64, u64) {
    totals(
        Filter::ok()
            .eni(eni)
            .dir(dir)
            .proto(17)
            .src(src)
            .dst(dst)
            .sport(known::SPORT)
            .dport(known::DPORT)
            .select(records),
    )
}

/// Sends the known burst from `src` (in `ns`) to `dst`, received by `sink`.
fn burst(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, sink: &UdpSink) {
    let before = sink.received();
    let sent = udp_send(
        ns,
        v4(src, known::SPORT),
        v4(dst, known::DPORT),
        &known::sizes(),
        None,
    );
    assert_eq!(sent as u64, known::PACKETS);
    assert_eq!(
        sink.wait_for(before + known::PACKETS, Duration::from_secs(5)),
        before + known::PACKETS
    );
}

/// A bridge in `host` with ports whose other ends sit in their own namespaces at
/// 10.201.0.<idx>/24.
struct Switch {
    host: Netns,
    br: String,
    clients: Vec<(Netns, String, Ipv4Addr)>,
}

impl Switch {
    fn new() -> Switch {
        let host = Netns::new("sw");
        let br = ifname("sw", 0, 'r');
        host.exec(&["ip", "link", "add", &br, "type", "bridge"]);
        host.exec(&["ip", "link", "set", &br, "up"]);
        Switch {
            host,
            br,
            clients: Vec::new(),
        }
    }

    /// Adds port `idx`; returns the bridge-side interface name.
    fn port(&mut self, idx: u8) -> String {
        let ns = Netns::new(&format!("c{idx}"));
        let port = ifname("sw", idx, 'p');
        let peer = ifname("sw", idx, 'c');
        run(
            "ip",
            &[
                "link",
                "add",
                &port,
                "netns",
                self.host.name(),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                ns.name(),
            ],
        );
        self.host.disable_ipv6(&port);
        ns.disable_ipv6(&peer);
        let addr = Ipv4Addr::new(10, 201, 0, idx);
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &peer]);
        ns.exec(&["ip", "link", "set", &peer, "up"]);
        self.host
            .exec(&["ip", "link", "set", &port, "master", &self.br]);
        self.host.exec(&["ip", "link", "set", &port, "up"]);
        // The bridge knows where each client is (no flooding of unknown unicast to
        // every port, which the capture would rightly count).
        let mac = String::from_utf8(
            ns.exec(&["cat", &format!("/sys/class/net/{peer}/address")])
                .stdout,
        )
        .unwrap();
        self.host.exec(&[
            "bridge",
            "fdb",
            "replace",
            mac.trim(),
            "dev",
            &port,
            "master",
            "static",
        ]);
        self.clients.push((ns, port.clone(), addr));
        port
    }
}

#[test]
fn vswitch_captures_every_port_including_one_added_later() {
    require_root();
    let mut sw = Switch::new();
    let ports: Vec<String> = (1..=3).map(|i| sw.port(i)).collect();
    // Static neighbours so that the bursts need no ARP round trip first.
    for i in 0..sw.clients.len() {
        for j in 0..sw.clients.len() {
            if i != j {
                let mac = sw.clients[j].0.exec(&[
                    "cat",
                    &format!("/sys/class/net/{}/address", ifname("sw", j as u8 + 1, 'c')),
                ]);
                let mac = String::from_utf8(mac.stdout).unwrap();
                sw.clients[i].0.exec(&[
                    "ip",
                    "neigh",
                    "replace",
                    &sw.clients[j].2.to_string(),
                    "lladdr",
                    mac.trim(),
                    "dev",
                    &ifname("sw", i as u8 + 1, 'c'),
                    "nud",
                    "permanent",
                ]);
            }
        }
    }
    let ctl = Control::new("sw");
    let agent = ctl.start_agent(sw.host.name(), &[]);
    ctl.ok(&[
        "create",
        "sw",
        "--resource-type",
        "vSwitch",
        "--resource-id",
        &sw.br,
        "--window",
        "2s",
    ]);
    ctl.wait_interfaces("sw", &[&ports[0], &ports[1], &ports[2]]);

    let (c1, c2) = (sw.clients[0].2, sw.clients[1].2);
    let sink2 = UdpSink::bind(sw.clients[1].0.name(), v4(c2, known::DPORT));
    burst(sw.clients[0].0.name(), c1, c2, &sink2);

    // A fourth port joins while the agent runs: captured from its first packets.
    let p4 = sw.port(4);
    ctl.wait_interfaces("sw", &[&ports[0], &ports[1], &ports[2], &p4]);
    let c4 = sw.clients[3].2;
    let mac1 = String::from_utf8(
        sw.clients[0]
            .0
            .exec(&[
                "cat",
                &format!("/sys/class/net/{}/address", ifname("sw", 1, 'c')),
            ])
            .stdout,
    )
    .unwrap();
    sw.clients[3].0.exec(&[
        "ip",
        "neigh",
        "replace",
        &c1.to_string(),
        "lladdr",
        mac1.trim(),
        "dev",
        &ifname("sw", 4, 'c'),
        "nud",
        "permanent",
    ]);
    thread::sleep(Duration::from_secs(1));
    let sink1 = UdpSink::bind(sw.clients[0].0.name(), v4(c1, known::DPORT));
    burst(sw.clients[3].0.name(), c4, c1, &sink1);

    let records = agent.stop();
    let exact = (known::PACKETS, known::BYTES);
    assert_eq!(
        burst_totals(&records, &ports[0], "in", c1, c2),
        exact,
        "port 1 in"
    );
    assert_eq!(
        burst_totals(&records, &ports[1], "out", c1, c2),
        exact,
        "port 2 out"
    );
    assert_eq!(
        burst_totals(&records, &ports[2], "out", c1, c2),
        (0, 0),
        "port 3 saw nothing of it"
    );
    assert_eq!(
        burst_totals(&records, &p4, "in", c4, c1),
        exact,
        "port 4 in, from its first packet"
    );
    assert_eq!(
        burst_totals(&records, &ports[0], "out", c4, c1),
        exact,
        "port 1 out"
    );
    // The records name the bridge as their vSwitch.
    for r in records.iter().filter(|r| r.status() == "OK") {
        assert_eq!(r.field("vswitch-id"), sw.br, "{r}");
    }
}

/// BPF links the agent holds: one per hook of every attached interface; a leak would
/// show here.
fn agent_links(agent: &Agent) -> usize {
    agent.bpf_fds().links
}

/// Waits until the agent holds `n` links.
fn wait_links(agent: &Agent, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent_links(agent) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent holds {} links, expected {n}",
            agent_links(agent)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vpc_captures_interfaces_created_later_and_each_life_of_a_recreated_one() {
    require_root();
    let a = Netns::new("vpc");
    let b = Netns::new("vpcb");
    let ctl = Control::new("vpc");
    let config = ctl.path("flowlog.toml");
    std::fs::write(
        &config,
        "[[flow_log]]\nname = \"node\"\nresource_type = \"VPC\"\nresource_ids = [\"vpc-test\"]\nwindow = \"2s\"\n",
    )
    .unwrap();
    let agent = ctl.start_agent(a.name(), &["--config", &config]);
    assert_eq!(agent_links(&agent), 0, "nothing to capture yet (only lo)");

    // Created after the agent started; traffic one second after it is up.
    let v = VethPair::new(&a, &b, "vpc", 1);
    thread::sleep(Duration::from_secs(1));
    let sink = known::sink(&b, &v);
    known::send(&a, &v, &sink);
    assert_eq!(agent_links(&agent), 2);
    drop(sink);

    // The same name deleted and created again under traffic: a new life.
    a.exec(&["ip", "link", "del", &v.if_a]);
    wait_links(&agent, 0);
    let gone_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = VethPair::new(&a, &b, "vpc", 1);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(agent_links(&agent), 2, "attached again, once");
    let sink = known::sink(&b, &v);
    known::send(&a, &v, &sink);

    let records = agent.stop();
    let f = known::filter(&v).eni(&v.if_a);
    let lives: Vec<&Record> = f.select(&records);
    assert_eq!(
        totals(lives.iter().copied()),
        (2 * known::PACKETS, 2 * known::BYTES)
    );
    // Records of the first life end when it went; those of the second start after.
    assert!(
        lives.iter().any(|r| r.end() <= gone_at),
        "first life: {lives:?}"
    );
    assert!(
        lives.iter().any(|r| r.start() >= gone_at),
        "second life: {lives:?}"
    );
    for r in &lives {
        assert_eq!(r.field("vpc-id"), "vpc-test");
    }
    flowlog_tests::netns::assert_detached(a.name(), &v.if_a);
}

#[test]
fn two_windows_on_one_interface_sum_to_the_same_counts() {
    require_root();
    let a = Netns::new("win");
    let b = Netns::new("winb");
    let v = VethPair::new(&a, &b, "win", 1);
    let ctl = Control::new("win");
    let agent = ctl.start_agent(a.name(), &[]);
    let (fast, slow) = (ctl.path("fast.json"), ctl.path("slow.json"));
    ctl.create_eni("fast", &v.if_a, "2s", &["--output", &fast]);
    ctl.ok(&[
        "create",
        "slow",
        "--resource-type",
        "eni",
        "--resource-id",
        &v.if_a,
        "--window",
        "6s",
        "--output",
        &slow,
    ]);
    let sink = known::sink(&b, &v);
    // 13 s of paced traffic on three streams: several 2 s and 6 s windows.
    let mut senders = Vec::new();
    for (i, n) in [(0u16, 260usize), (1, 130), (2, 65)] {
        let (ns, src, dst) = (a.name().to_string(), v.v4_a, v.v4_b);
        senders.push(thread::spawn(move || {
            udp_send(
                &ns,
                v4(src, 41000 + i),
                v4(dst, known::DPORT),
                &vec![200; n],
                Some(Duration::from_secs(13)),
            )
        }));
    }
    let sent: usize = senders.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        sink.wait_for(sent as u64, Duration::from_secs(5)),
        sent as u64
    );
    let stderr = agent.stderr();
    drop(agent.stop());
    assert!(
        stderr.contains("flow log started flow_log=slow window=6s"),
        "{stderr}"
    );

    let (fast, slow) = (read_records(&fast), read_records(&slow));
    // The fast instance's windows are 2 s long (the capture tick), the slow one's 6 s.
    assert!(fast
        .iter()
        .filter(|r| r.status() == "OK")
        .all(|r| r.end() - r.start() <= 2));
    assert!(slow
        .iter()
        .filter(|r| r.status() == "OK")
        .any(|r| r.end() - r.start() > 2));
    // Per stream, direction and 6 s window: equal sums.
    let group = |recs: &[Record]| {
        let mut m: BTreeMap<(String, String, u64), (u64, u64)> = BTreeMap::new();
        for r in recs
            .iter()
            .filter(|r| r.status() == "OK" && r.protocol() == 17)
        {
            let e = m
                .entry((
                    r.field("srcport").to_string(),
                    r.direction().to_string(),
                    r.start() / 6,
                ))
                .or_default();
            e.0 += r.packets();
            e.1 += r.bytes();
        }
        m
    };
    let (gf, gs) = (group(&fast), group(&slow));
    assert!(gs.len() >= 6, "{gs:?}");
    assert_eq!(gf, gs);
    let total: u64 = gs.values().map(|v| v.0).sum();
    assert_eq!(total, sent as u64);
}

#[test]
fn create_stop_start_delete_record_exactly_the_active_periods() {
    require_root();
    let a = Netns::new("life");
    let b = Netns::new("lifeb");
    let v = VethPair::new(&a, &b, "life", 1);
    let ctl = Control::new("life");
    let agent = ctl.start_agent(a.name(), &[]);
    let sink = known::sink(&b, &v);
    let mut received = 0u64;
    let mut phase = |n: usize| {
        let sent = udp_send(
            a.name(),
            v4(v.v4_a, known::SPORT),
            v4(v.v4_b, known::DPORT),
            &vec![100; n],
            Some(Duration::from_millis(800)),
        );
        received += sent as u64;
        assert_eq!(sink.wait_for(received, Duration::from_secs(5)), received);
    };
    let stream = known::filter(&v);
    let recorded = |agent: &Agent| {
        // Records are written before the control call returns; give the reader a moment.
        thread::sleep(Duration::from_millis(300));
        totals(stream.select(&agent.records())).0
    };
    ctl.create_eni("life", &v.if_a, "2s", &[]);
    phase(30);
    ctl.ok(&["stop", "life"]);
    assert_eq!(recorded(&agent), 30, "stop emits the partial window");
    let d = ctl.describe("life");
    assert_eq!(d["state"], "inactive");
    assert_eq!(d["interfaces"].as_array().unwrap().len(), 0);
    assert_eq!(
        agent_links(&agent),
        0,
        "a stopped flow log costs nothing on the data path"
    );
    phase(20);
    ctl.ok(&["start", "life"]);
    ctl.wait_interfaces("life", &[&v.if_a]);
    phase(25);
    ctl.ok(&["delete", "life"]);
    assert_eq!(recorded(&agent), 55);
    phase(10);
    let records = agent.stop();
    assert_eq!(
        totals(stream.select(&records)).0,
        55,
        "nothing recorded while stopped or after delete"
    );
    let list = ctl.cli(&["list"]);
    assert!(!list.status.success(), "the agent is gone");
}

/// `flowlog_datapath_events_total{event="..."}` from the agent's metrics.
fn datapath_event(ns: &str, port: u16, event: &str) -> u64 {
    let m = scrape::metrics(ns, port);
    scrape::sample(
        &m,
        &format!("flowlog_datapath_events_total{{event=\"{event}\"}}"),
    ) as u64
}

#[test]
fn traffic_paths_are_classified_and_filtered_in_the_kernel() {
    require_root();
    let a = Netns::new("path");
    let b = Netns::new("pathb");
    let v = VethPair::new(&a, &b, "path", 1);
    // Destinations behind B: a VPN peer, a NAT range, the VPC itself, the Internet.
    let dests: [(Ipv4Addr, u64); 4] = [
        (Ipv4Addr::new(10, 77, 0, 2), 9),
        (Ipv4Addr::new(10, 88, 0, 2), 7),
        (v.v4_b, 2),
        (Ipv4Addr::new(10, 99, 0, 2), 13),
    ];
    for (d, _) in &dests[..] {
        if *d != v.v4_b {
            b.exec(&["ip", "addr", "add", &format!("{d}/32"), "dev", &v.if_b]);
            a.exec(&[
                "ip",
                "route",
                "add",
                &format!("{d}/32"),
                "via",
                &v.v4_b.to_string(),
            ]);
        }
    }
    let ctl = Control::new("path");
    let config = ctl.path("flowlog.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[paths.role]]
name = "uplink"
interfaces = ["{if_a}"]
[[paths.set]]
name = "vpn"
cidrs = ["10.77.0.0/16"]
[[paths.set]]
name = "nat"
cidrs = ["10.88.0.0/16"]
[[paths.set]]
name = "vpc"
cidrs = ["10.200.0.0/16"]
[[paths.rule]]
peer = "vpn"
path = 9
[[paths.rule]]
peer = "nat"
path = 7
[[paths.rule]]
peer = "vpc"
path = 2
[[paths.rule]]
role = "uplink"
direction = "out"
path = 13
"#,
            if_a = v.if_a
        ),
    )
    .unwrap();
    let port = 19471;
    let mut args = ctl.run_args();
    args.extend([
        "--config".into(),
        config,
        "--metrics-address".into(),
        format!(":{port}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(a.name(), &args);
    let sink = UdpSink::bind(b.name(), v4(Ipv4Addr::UNSPECIFIED, known::DPORT));
    let send_all = |received: &mut u64| {
        for (d, _) in &dests {
            let sent = udp_send(
                a.name(),
                v4(v.v4_a, known::SPORT),
                v4(*d, known::DPORT),
                &known::sizes(),
                None,
            );
            *received += sent as u64;
        }
        assert_eq!(sink.wait_for(*received, Duration::from_secs(5)), *received);
    };
    let mut received = 0;

    // Every path recorded, each stream with its value.
    ctl.create_eni("all", &v.if_a, "2s", &["--output", &ctl.path("all.json")]);
    send_all(&mut received);
    ctl.ok(&["delete", "all"]);
    let all = read_records(&ctl.path("all.json"));
    for (d, path) in &dests {
        let recs = Filter::ok().dir("out").proto(17).dst(d).select(&all);
        assert_eq!(
            totals(recs.iter().copied()),
            (known::PACKETS, known::BYTES),
            "to {d}"
        );
        for r in recs {
            assert_eq!(r.num("traffic_path"), *path, "{r}");
        }
    }

    // Only the VPN path: the other streams make no flow-map entry, and say so.
    thread::sleep(Duration::from_millis(2100));
    let before = datapath_event(a.name(), port, "not_selected");
    ctl.create_eni(
        "vpn",
        &v.if_a,
        "2s",
        &["--traffic-path", "9", "--output", &ctl.path("vpn.json")],
    );
    send_all(&mut received);
    ctl.ok(&["stop", "vpn"]);
    thread::sleep(Duration::from_millis(2100));
    let after = datapath_event(a.name(), port, "not_selected");
    drop(agent.stop());
    let vpn = read_records(&ctl.path("vpn.json"));
    let ok: Vec<&Record> = Filter::ok().select(&vpn);
    assert_eq!(
        totals(ok.iter().copied()),
        (known::PACKETS, known::BYTES),
        "{ok:?}"
    );
    assert!(ok
        .iter()
        .all(|r| r.field("dstaddr") == "10.77.0.2" && r.num("traffic_path") == 9));
    assert_eq!(
        after - before,
        3 * known::PACKETS,
        "the other three streams' packets"
    );
}

#[test]
fn ip_version_ipv4_only_or_dual_stack() {
    require_root();
    let a = Netns::new("ipv");
    let b = Netns::new("ipvb");
    let v = VethPair::dual_stack(&a, &b, "ipv", 1);
    let ctl = Control::new("ipv");
    let agent = ctl.start_agent(a.name(), &[]);
    let (f4, fds) = (ctl.path("v4.json"), ctl.path("ds.json"));
    ctl.create_eni(
        "v4",
        &v.if_a,
        "2s",
        &["--ip-version", "IPv4", "--output", &f4],
    );
    ctl.create_eni(
        "ds",
        &v.if_a,
        "2s",
        &["--ip-version", "Dual-stack", "--output", &fds],
    );
    let sink4 = known::sink(&b, &v);
    known::send(&a, &v, &sink4);
    let sink6 = UdpSink::bind(b.name(), v6(v.v6b(), known::DPORT));
    let sent = udp_send(
        a.name(),
        v6(v.v6a(), known::SPORT),
        v6(v.v6b(), known::DPORT),
        &known::sizes(),
        None,
    );
    assert_eq!(
        sink6.wait_for(sent as u64, Duration::from_secs(5)),
        known::PACKETS
    );
    drop(agent.stop());
    let (r4, rds) = (read_records(&f4), read_records(&fds));
    let v6_stream = Filter::ok().dir("out").proto(17).src(v.v6a()).dst(v.v6b());
    let v6_bytes = known::BYTES + 20 * known::PACKETS;
    assert_eq!(
        totals(known::filter(&v).select(&r4)),
        (known::PACKETS, known::BYTES)
    );
    assert!(
        r4.iter().all(|r| r.field("type") != "IPv6"),
        "an IPv4 flow log has no IPv6 record"
    );
    assert_eq!(
        totals(known::filter(&v).select(&rds)),
        (known::PACKETS, known::BYTES)
    );
    assert_eq!(totals(v6_stream.select(&rds)), (known::PACKETS, v6_bytes));
}

#[test]
fn bad_requests_change_nothing_and_instances_survive_a_restart() {
    require_root();
    let a = Netns::new("bad");
    let b = Netns::new("badb");
    let v = VethPair::new(&a, &b, "bad", 1);
    let br = ifname("bad", 0, 'r');
    a.exec(&["ip", "link", "add", &br, "type", "bridge"]);
    let ctl = Control::new("bad");
    let config = ctl.path("flowlog.toml");
    std::fs::write(&config, "max_flow_logs = 2\n").unwrap();
    let agent = ctl.start_agent(a.name(), &["--config", &config]);
    ctl.create_eni(
        "keep",
        &v.if_a,
        "5m",
        &["--traffic-type", "Reject", "--description", "kept"],
    );
    ctl.ok(&[
        "create",
        "idle",
        "--resource-type",
        "vSwitch",
        "--resource-id",
        &br,
        "--window",
        "1m",
        "--inactive",
    ]);
    let list = ctl.ok(&["list"]);
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["start", "nope"],
            "no flow log named \"nope\" (see `flowlog list`)".into(),
        ),
        (vec!["stop", "nope"], "no flow log named \"nope\"".into()),
        (vec!["delete", "nope"], "no flow log named \"nope\"".into()),
        (
            vec!["describe", "nope"],
            "no flow log named \"nope\"".into(),
        ),
        (
            vec!["create", "keep", "--resource-type", "VPC"],
            "a flow log named \"keep\" already exists".into(),
        ),
        (
            vec!["create", "third", "--resource-type", "VPC"],
            "quota exceeded: this node holds at most 2 flow logs (max_flow_logs)".into(),
        ),
        (
            vec![
                "create",
                "x",
                "--resource-type",
                "ENI",
                "--resource-id",
                "nope0",
            ],
            "ENI \"nope0\": no such interface on this node".into(),
        ),
        (
            vec![
                "create",
                "x",
                "--resource-type",
                "vSwitch",
                "--resource-id",
                &v.if_a,
            ],
            format!("vSwitch \"{}\": no bridge of that name", v.if_a),
        ),
        (
            vec![
                "create",
                "x",
                "--resource-type",
                "vSwitch",
                "--resource-id",
                "veth[*",
            ],
            "vSwitch \"veth[*\": bad glob".into(),
        ),
        (
            vec!["create", "x", "--resource-type", "VPC", "--window", "1h"],
            "window \"1h\" is not allowed".into(),
        ),
        (
            vec![
                "create",
                "x",
                "--resource-type",
                "VPC",
                "--traffic-path",
                "16",
            ],
            "traffic path \"16\" is not a traffic_path value".into(),
        ),
        (
            vec!["create", "x", "--resource-type", "subnet"],
            "resource type \"subnet\": use ENI, vSwitch or VPC".into(),
        ),
    ];
    for (argv, msg) in &cases {
        let out = ctl.cli(argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {err}");
        assert!(err.contains(msg.as_str()), "{argv:?}: {err}");
    }
    // Requests the CLI cannot make: unknown keys and operations, garbage.
    for (line, msg) in [
        (
            r#"{"op":"create","flow_log":{"name":"x","resource_type":"VPC","colour":"red"}}"#,
            "unknown field `colour`",
        ),
        (r#"{"op":"reboot"}"#, "unknown request"),
        ("{", "bad request"),
    ] {
        let r = ctl.raw(line);
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains(msg), "{r}");
    }
    assert_eq!(ctl.ok(&["list"]), list, "bad requests changed nothing");
    // The socket is the owner's only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(ctl.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A new agent finds the instances with their settings and states.
    drop(agent.stop());
    let agent = ctl.start_agent(a.name(), &["--config", &config]);
    assert_eq!(ctl.ok(&["list"]), list);
    let d = ctl.describe("keep");
    assert_eq!(d["window"], "5m");
    assert_eq!(d["traffic_type"], "Reject");
    assert_eq!(d["description"], "kept");
    assert_eq!(d["state"], "active");
    assert_eq!(d["interfaces"], serde_json::json!([v.if_a]));
    assert_eq!(ctl.describe("idle")["state"], "inactive");
    drop(agent.stop());
}
