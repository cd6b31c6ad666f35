//! Overload: ten times more new streams per second than `--max-flows`, while the sink
//! blocks (a FIFO nobody reads for a while). The data path does not slow down, and
//! recorded + skipped equals what crossed the interface, exactly.
//!
//! `FLOWLOG_OVERLOAD_SECS` sets the length (default 20 s in CI; the minute:
//! `FLOWLOG_OVERLOAD_SECS=60`).
use std::{
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::unix::fs::OpenOptionsExt as _,
    thread,
    time::{Duration, Instant},
};

use flowlog_tests::{
    record::Record,
    require_root,
    traffic::{read_snmp, snmp_counter},
    with_netns, Agent, Netns, VethPair,
};

const MAX_FLOWS: u64 = 1000;

#[test]
fn ten_times_max_flows_per_second_with_a_blocked_sink() {
    require_root();
    let secs: u64 = std::env::var("FLOWLOG_OVERLOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let a = Netns::new("ovl");
    let b = Netns::new("ovlb");
    let v = VethPair::new(&a, &b, "ovl", 1);
    // B answers closed ports with a few ICMP errors only (counted exactly below).
    b.sysctl("net.ipv4.icmp_ratelimit=100000");
    let dir = std::env::temp_dir().join(format!("flowlog-ovl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("records.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Our read end exists (the agent's open does not block), but nobody reads yet.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let icmp_before = snmp_counter(&read_snmp(b.name()), "Icmp:OutDestUnreachs");
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "2s",
            "--max-flows",
            &MAX_FLOWS.to_string(),
            "--output",
            fifo.to_str().unwrap(),
        ],
    );

    // 10 x max_flows new streams per second: one socket, a new destination port for
    // every datagram.
    let rate = 10 * MAX_FLOWS;
    let (ns, dst) = (a.name().to_string(), v.v4_b);
    let sender = thread::spawn(move || {
        let sock = with_netns(&ns, || UdpSocket::bind("10.200.1.1:0").unwrap());
        let total = rate * secs;
        let start = Instant::now();
        let mut sent = 0u64;
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let port = 1 + (i % 60000) as u16;
            loop {
                match sock.send_to(&[0u8; 32], (dst, port)) {
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
            sent += 1;
        }
        (sent, start.elapsed())
    });
    // The sink blocks for the first half of the run (the pipe fills, the agent's write
    // waits), then drains.
    thread::sleep(Duration::from_secs(secs / 2));
    let lines = thread::spawn(move || {
        let mut f = reader;
        // Back to blocking reads until the agent closes its end.
        // SAFETY: valid fd.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        let mut out = Vec::new();
        for line in BufReader::new(&mut f).lines() {
            out.push(line.unwrap());
        }
        out
    });
    let (sent, took) = sender.join().unwrap();
    thread::sleep(Duration::from_millis(500));
    let icmp = (snmp_counter(&read_snmp(b.name()), "Icmp:OutDestUnreachs") - icmp_before) as u64;
    let stderr = agent.stderr();
    drop(agent.stop());
    let records: Vec<Record> = lines
        .join()
        .unwrap()
        .iter()
        .map(|l| Record::parse(l).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);

    let eni: Vec<&Record> = records.iter().filter(|r| r.eni() == v.if_a).collect();
    let recorded: u64 = eni
        .iter()
        .filter(|r| r.status() == "OK")
        .map(|r| r.packets())
        .sum();
    let skipped: u64 = eni
        .iter()
        .filter(|r| r.status() == "SKIPDATA")
        .map(|r| r.num("skipped-packets"))
        .sum();
    eprintln!(
        "overload: {sent} datagrams to new streams in {:.1} s ({:.0}/s, target {rate}/s), {icmp} ICMP back; \
         recorded {recorded} + skipped {skipped} = {}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64(),
        recorded + skipped
    );
    assert!(skipped > 0, "the flow map overflowed");
    assert_eq!(
        recorded + skipped,
        sent + icmp,
        "recorded + skipped = what crossed"
    );
    // The data path kept its pace while the agent was blocked.
    assert!(
        took < Duration::from_secs(secs) + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!stderr.contains("packets lost to the log"), "{stderr}");
}
