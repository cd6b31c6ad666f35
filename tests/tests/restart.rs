//! Surviving the agent: maps and links pinned in bpffs are adopted by the next agent,
//! so a SIGKILL (or a hand-over with SIGUSR2) loses no packet; `--cleanup` removes
//! everything pinned. Exact totals over the whole run.
use std::{thread, time::Duration};

use flowlog_tests::{
    known,
    netns::{assert_detached, BpfFs},
    require_root, run_to_exit, totals, Agent, Netns, Record, VethPair,
};

/// 6,000 paced datagrams over 12 s from A to B on one stream; returns how many left.
fn paced(a: &Netns, v: &VethPair) -> thread::JoinHandle<usize> {
    known::paced(a, v, 6000, 64, Duration::from_secs(12))
}

/// A veth pair with the known stream's receiver and a bpffs for `--pin-dir`.
struct Setup {
    fs: BpfFs,
    a: Netns,
    _b: Netns,
    v: VethPair,
    sink: flowlog_tests::traffic::UdpSink,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        require_root();
        let fs = BpfFs::new(tag);
        let a = Netns::new(tag);
        let b = Netns::new(&format!("{tag}b"));
        let v = VethPair::new(&a, &b, tag, 1);
        let sink = known::sink(&b, &v);
        Setup {
            fs,
            a,
            _b: b,
            v,
            sink,
        }
    }

    /// `flowlog run` on A's end, 3 s windows, pinned.
    fn start(&self) -> Agent {
        let pin = self.fs.pin_dir();
        let args = [
            "run",
            "--interface",
            &self.v.if_a,
            "--window",
            "3s",
            "--pin-dir",
            &pin,
        ];
        Agent::start(self.a.name(), &args)
    }
}

fn stream_packets(records: &[Record], v: &VethPair) -> u64 {
    totals(known::filter(v).select(records)).0
}

#[test]
fn sigkill_mid_window_then_restart_loses_nothing() {
    let setup = Setup::new("kill");
    let Setup { fs, a, v, sink, .. } = &setup;
    let first = setup.start();
    let sender = paced(a, v);
    thread::sleep(Duration::from_millis(4500));
    let before = first.kill();
    assert!(
        !fs.pinned().is_empty(),
        "maps and links stay pinned after SIGKILL"
    );
    thread::sleep(Duration::from_secs(1));
    let second = setup.start();
    assert!(
        second
            .stderr()
            .contains("adopted the pinned maps and links of a previous agent"),
        "{}",
        second.stderr()
    );
    let sent = sender.join().unwrap() as u64;
    assert_eq!(sink.wait_for(sent, Duration::from_secs(5)), sent);
    let after = second.stop();
    // Every packet is in exactly one record of one of the two agents.
    assert_eq!(stream_packets(&before, v) + stream_packets(&after, v), sent);
    assert!(stream_packets(&after, v) > 0);
    // The first window of the second agent starts where the first agent's last one
    // ended, and says so.
    let last_first = before.iter().map(Record::end).max().unwrap();
    let first_second = after.iter().map(Record::start).min().unwrap();
    assert!(
        first_second <= last_first + 3,
        "{last_first} .. {first_second}"
    );
    // A clean stop leaves nothing behind.
    assert!(fs.pinned().is_empty(), "{:?}", fs.pinned());
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn sigusr2_hands_over_to_the_next_agent_and_cleanup_removes_the_pins() {
    let setup = Setup::new("hand");
    let Setup { fs, a, v, sink, .. } = &setup;
    let pin = fs.pin_dir();
    let first = setup.start();
    let sender = paced(a, v);
    thread::sleep(Duration::from_millis(4500));
    // An upgrade: the old agent emits its partial window and leaves the programs
    // counting; the new one starts 1 s later.
    let before = first.stop_with(libc::SIGUSR2);
    thread::sleep(Duration::from_secs(1));
    let second = setup.start();
    let sent = sender.join().unwrap() as u64;
    assert_eq!(sink.wait_for(sent, Duration::from_secs(5)), sent);
    let after = second.stop();
    assert_eq!(stream_packets(&before, v) + stream_packets(&after, v), sent);
    assert!(stream_packets(&before, v) > 0);

    // Killed, then cleaned up on purpose: nothing pinned, nothing attached.
    let third = setup.start();
    drop(third.kill());
    assert!(!fs.pinned().is_empty());
    let out = run_to_exit(a.name(), &["run", "--cleanup", "--pin-dir", &pin]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("removed 2 pinned links"),
        "{}",
        out.stderr
    );
    assert!(fs.pinned().is_empty(), "{:?}", fs.pinned());
    assert_detached(a.name(), &v.if_a);
}
