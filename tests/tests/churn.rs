//! Interface churn under a VPC flow log: interfaces deleted and created again,
//! renamed, moved to another namespace and back, set down and up, 200 cycles, with a
//! datagram after every new life. No crash, no leaked link, program or map, and a
//! record for each life.
use std::{collections::BTreeSet, thread, time::Duration};

use flowlog_tests::{
    control::Control,
    netns::assert_detached,
    require_root,
    traffic::{udp_send, v4, UdpSink},
    Agent, Filter, Netns, VethPair,
};

/// (maps, programs, links) the agent process holds.
fn held(agent: &Agent) -> (usize, usize, usize) {
    let f = agent.bpf_fds();
    (f.maps, f.programs, f.links)
}

fn wait_links(agent: &Agent, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(agent).2 != n {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent holds {:?} (maps, programs, links), expected {n} links",
            held(agent)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Addresses, neighbours and state of A's end again (after a move back).
fn configure_a(a: &Netns, v: &VethPair) {
    a.disable_ipv6(&v.if_a);
    a.exec(&[
        "ip",
        "addr",
        "replace",
        &format!("{}/24", v.v4_a),
        "dev",
        &v.if_a,
    ]);
    a.exec(&["ip", "link", "set", &v.if_a, "up"]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        &v.v4_b.to_string(),
        "lladdr",
        &v.mac_b,
        "dev",
        &v.if_a,
        "nud",
        "permanent",
    ]);
}

#[test]
fn two_hundred_cycles_of_interface_churn() {
    require_root();
    let a = Netns::new("churn");
    let b = Netns::new("churnb");
    let c = Netns::new("churnc");
    let ctl = Control::new("churn");
    let config = ctl.path("flowlog.toml");
    std::fs::write(
        &config,
        "[[flow_log]]\nname = \"node\"\nresource_type = \"VPC\"\nwindow = \"2s\"\n",
    )
    .unwrap();
    let agent = ctl.start_agent(a.name(), &["--config", &config]);
    let mut v = VethPair::new(&a, &b, "chn", 1);
    wait_links(&agent, 2);
    let baseline = held(&agent);
    let mut sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let mut lives = BTreeSet::new();
    let mut probe = |v: &VethPair, sink: &UdpSink, life: u16| {
        let before = sink.received();
        let sent = udp_send(
            a.name(),
            v4(v.v4_a, 20000 + life),
            v4(v.v4_b, 5001),
            &[32],
            None,
        );
        assert_eq!(sent, 1);
        assert_eq!(
            sink.wait_for(before + 1, Duration::from_secs(5)),
            before + 1
        );
        lives.insert(20000 + life);
    };
    probe(&v, &sink, 0);
    let tmp = format!("{}x", &v.if_a[..v.if_a.len() - 1]);
    for cycle in 1..=200u16 {
        match cycle % 4 {
            0 => {
                // Deleted and created again: a new life (new ifindex).
                drop(sink);
                a.exec(&["ip", "link", "del", &v.if_a]);
                wait_links(&agent, 0);
                v = VethPair::new(&a, &b, "chn", 1);
                sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
            }
            1 => {
                // Renamed and named back.
                a.exec(&["ip", "link", "set", &v.if_a, "down"]);
                a.exec(&["ip", "link", "set", &v.if_a, "name", &tmp]);
                a.exec(&["ip", "link", "set", &tmp, "name", &v.if_a]);
                configure_a(&a, &v);
            }
            2 => {
                // Moved to another namespace (gone for this agent) and back.
                a.exec(&["ip", "link", "set", &v.if_a, "netns", c.name()]);
                wait_links(&agent, 0);
                c.exec(&["ip", "link", "set", &v.if_a, "netns", a.name()]);
                configure_a(&a, &v);
            }
            _ => {
                a.exec(&["ip", "link", "set", &v.if_a, "down"]);
                a.exec(&["ip", "link", "set", &v.if_a, "up"]);
            }
        }
        wait_links(&agent, 2);
        if cycle % 4 == 0 || cycle % 4 == 2 {
            probe(&v, &sink, cycle);
        }
    }
    assert!(agent_alive(&agent));
    assert_eq!(
        held(&agent),
        baseline,
        "maps, programs and links back to the baseline"
    );
    let records = agent.stop();
    // One record (one packet) for each life's probe.
    for port in &lives {
        let r = Filter::ok()
            .dir("out")
            .proto(17)
            .sport(port)
            .select(&records);
        assert_eq!(
            r.iter().map(|r| r.packets()).sum::<u64>(),
            1,
            "probe {port}"
        );
    }
    assert_eq!(lives.len(), 101);
    assert_detached(a.name(), &v.if_a);
}

fn agent_alive(agent: &Agent) -> bool {
    std::path::Path::new(&format!("/proc/{}", agent.pid())).exists()
}
