//! A soak run: mixed traffic (UDP streams that come and go, ICMP, TCP), 10 s windows,
//! policy reloads and flow log changes every few cycles. RSS stays flat after the
//! warm-up, the UDP totals are exact, nothing is logged at ERROR.
//!
//! `FLOWLOG_SOAK_SECS` sets the length (default 45 s, the CI run);
//! `cargo xtask soak --minutes 30` runs the long one and prints the figures.
use std::{
    thread,
    time::{Duration, Instant},
};

use flowlog_tests::{
    control::Control,
    policy::PolicyFile,
    require_root,
    tcp::TcpServer,
    totals,
    traffic::{ping, tcp_send, udp_send, v4, UdpSink},
    Filter, Netns, VethPair,
};

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn policy(rule_id: u32) -> String {
    format!(
        r#"
[[rule_set]]
name = "soak"
interfaces = ["IFACE"]
kind = "stateful"
mode = "audit"
default_ingress = "accept"
[[rule_set.rule]]
id = {rule_id}
direction = "egress"
protocol = "udp"
ports = "5001"
action = "accept"
"#
    )
}

#[test]
fn soak_rss_flat_totals_exact_no_errors() {
    require_root();
    let secs: u64 = std::env::var("FLOWLOG_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let a = Netns::new("soak");
    let b = Netns::new("soakb");
    let v = VethPair::new(&a, &b, "soak", 1);
    let pol = PolicyFile::new("soak", &policy(1).replace("IFACE", &v.if_a));
    let ctl = Control::new("soak");
    let config = ctl.path("flowlog.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"{}\"\n[[flow_log]]\nname = \"node\"\nresource_type = \"VPC\"\nwindow = \"10s\"\n",
            pol.arg()
        ),
    )
    .unwrap();
    let agent = ctl.start_agent(a.name(), &["--config", &config]);
    let pid = agent.pid();
    let udp = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let tcp = TcpServer::bind(b.name(), v4(v.v4_b, 5201));

    let start = Instant::now();
    let total = Duration::from_secs(secs);
    let warm = total.mul_f64(0.3);
    let (mut sent, mut cycles, mut reloads, mut changes) = (0u64, 0u32, 0u32, 0u32);
    let mut rss_warm = None;
    let mut rss_max_after = 0;
    let rss_start = rss_kib(pid);
    while start.elapsed() < total {
        cycles += 1;
        // 8 UDP streams per cycle; source ports rotate so streams come and go.
        for s in 0..8u16 {
            let port = 30000 + ((cycles as u16 * 8 + s) % 2000);
            sent += udp_send(
                a.name(),
                v4(v.v4_a, port),
                v4(v.v4_b, 5001),
                &[200; 25],
                None,
            ) as u64;
        }
        ping(a.name(), v.v4_b.into(), 2, 56, Duration::from_millis(10));
        if cycles % 5 == 0 {
            tcp_send(a.name(), v4(v.v4_b, 5201), 256 * 1024);
        }
        if cycles % 20 == 0 {
            reloads += 1;
            pol.write(&policy(1 + reloads).replace("IFACE", &v.if_a));
            agent.reload();
        }
        if cycles % 30 == 10 {
            changes += 1;
            ctl.ok(&[
                "create",
                "extra",
                "--resource-type",
                "ENI",
                "--resource-id",
                &v.if_a,
                "--window",
                "5s",
                "--output",
                &ctl.path("extra.json"),
            ]);
        }
        if cycles % 30 == 25 {
            changes += 1;
            ctl.ok(&["delete", "extra"]);
        }
        let rss = rss_kib(pid);
        if start.elapsed() >= warm {
            rss_warm.get_or_insert(rss);
            rss_max_after = rss_max_after.max(rss);
        }
        thread::sleep(Duration::from_millis(200));
    }
    // Every datagram sent crossed A's egress (what is counted), whether or not B's
    // socket kept up with the bursts on a loaded machine.
    let received = udp.wait_for(sent, Duration::from_secs(5));
    let rss_end = rss_kib(pid);
    let stderr = agent.stderr();
    let records = agent.stop();
    let _ = tcp.finish();
    let recorded = totals(
        Filter::ok()
            .dir("out")
            .proto(17)
            .dst(v.v4_b)
            .dport(5001)
            .select(&records),
    )
    .0;
    let rss_warm = rss_warm.unwrap_or(rss_start);
    let growth = (rss_max_after.max(rss_end) as f64 - rss_warm as f64) / rss_warm as f64;
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    eprintln!(
        "soak: {:.0} s, {cycles} cycles, {sent} UDP packets sent ({received} received), {recorded} recorded, {} records, \
         {reloads} policy reloads, {changes} flow log changes; RSS KiB start {rss_start}, after \
         warm-up {rss_warm}, max after {rss_max_after}, end {rss_end}: growth {:.2} %; {} error lines",
        start.elapsed().as_secs_f64(),
        records.len(),
        growth * 100.0,
        errors.len()
    );
    assert_eq!(recorded, sent, "UDP totals exact");
    assert!(errors.is_empty(), "errors logged: {errors:#?}");
    assert!(
        growth < 0.05,
        "RSS grew {:.2} % after warm-up",
        growth * 100.0
    );
}
