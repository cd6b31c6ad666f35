//! Surviving the agent: maps and links pinned in bpffs are adopted by the next agent,
//! so a SIGKILL (or a hand-over with SIGUSR2) loses no packet; `--cleanup` removes
//! everything pinned. Exact totals over the whole run.
use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowlog_tests::{
    control::Control,
    known,
    netns::{assert_detached, BpfFs},
    read_records, require_root, run_to_exit, totals, Agent, Netns, Record, VethPair, Wrapped,
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Packets of the known stream per 6 s window (by record start).
fn per_6s(records: &[Record], v: &VethPair) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for r in known::filter(v).select(records) {
        *m.entry(r.start() / 6).or_default() += r.packets();
    }
    m
}

/// The journal tests' flow logs on A's end: `fast` (2 s windows) and `slow` (6 s, three
/// 2 s capture ticks), each appending to its own file.
struct TwoFlowLogs {
    ctl: Control,
    pin: String,
    fast: String,
    slow: String,
}

impl TwoFlowLogs {
    fn new(setup: &Setup, tag: &str) -> TwoFlowLogs {
        let ctl = Control::new(tag);
        let (fast, slow) = (ctl.path("fast.json"), ctl.path("slow.json"));
        TwoFlowLogs {
            pin: setup.fs.pin_dir(),
            ctl,
            fast,
            slow,
        }
    }

    fn create(&self, v: &VethPair) {
        self.ctl
            .create_eni("fast", &v.if_a, "2s", &["--output", &self.fast]);
        self.ctl
            .create_eni("slow", &v.if_a, "6s", &["--output", &self.slow]);
    }

    fn journal(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.ctl.state_dir()).join("ticks.journal")
    }

    /// Every packet of the known stream in exactly one record of each flow log, and
    /// the journal emptied by the clean stop; returns both flow logs' records.
    fn assert_each_counts(&self, v: &VethPair, sent: u64) -> (Vec<Record>, Vec<Record>) {
        let (fast, slow) = (read_records(&self.fast), read_records(&self.slow));
        assert_eq!(totals(known::filter(v).select(&fast)).0, sent);
        assert_eq!(totals(known::filter(v).select(&slow)).0, sent);
        assert_eq!(std::fs::metadata(self.journal()).unwrap().len(), 0);
        (fast, slow)
    }
}

/// Two flow logs on one interface, 2 s and 6 s windows: the 6 s one accumulates three
/// capture ticks in the agent. A SIGKILL in the middle of a 6 s window, after ticks of
/// it were drained from the kernel, and a restart: the tick journal carries those
/// ticks over, so the 6 s flow log still records every packet, in the same 6 s windows
/// as the 2 s one. (Without the journal the drained ticks died with the agent.)
#[test]
fn sigkill_keeps_the_drained_ticks_of_a_longer_window() {
    let setup = Setup::new("jrnl");
    let Setup { fs, a, v, sink, .. } = &setup;
    let two = TwoFlowLogs::new(&setup, "jrnl");
    let first = two.ctl.start_agent(a.name(), &["--pin-dir", &two.pin]);
    two.create(v);
    let started = unix_now();
    let sender = known::paced(a, v, 3000, 64, Duration::from_secs(15));
    // Kill 3.0-3.6 s into a 6 s window, at least 4 s in: the tick that ended 2 s into
    // it was drained (into the journal), the next one is still in the kernel.
    loop {
        let now = unix_now();
        let phase = now % 6.0;
        if now - started >= 4.0 && (3.0..3.6).contains(&phase) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let killed_at = unix_now() as u64;
    let before = first.kill();
    assert!(before.is_empty(), "records go to the flow logs' files");
    let journaled = std::fs::metadata(two.journal()).map_or(0, |m| m.len());
    assert!(
        journaled > 0,
        "the drained tick is in {}",
        two.journal().display()
    );
    let second = two.ctl.start_agent(a.name(), &["--pin-dir", &two.pin]);
    let sent = sender.join().unwrap() as u64;
    assert_eq!(sink.wait_for(sent, Duration::from_secs(5)), sent);
    let stderr = second.stderr();
    drop(second.stop());
    assert!(
        stderr.contains("restored the ticks of an unfinished window from the tick journal")
            && stderr.contains("flow_log=slow ticks=1"),
        "{stderr}"
    );
    assert!(!stderr.contains("flow_log=fast ticks="), "{stderr}");
    let (fast, slow) = two.assert_each_counts(v, sent);
    // Per 6 s window the same packets, including the window the agent died in, which
    // the 6 s flow log reports as one record (not cut at the restart).
    let (gf, gs) = (per_6s(&fast, v), per_6s(&slow, v));
    assert_eq!(gf, gs);
    let crash_window = killed_at / 6;
    let slow_crash: Vec<&Record> = known::filter(v)
        .select(&slow)
        .into_iter()
        .filter(|r| r.start() / 6 == crash_window)
        .collect();
    assert_eq!(slow_crash.len(), 1, "{slow_crash:?}");
    assert_eq!(
        slow_crash[0].end() - slow_crash[0].start(),
        6 - slow_crash[0].start() % 6
    );
    // A clean stop leaves nothing pinned.
    assert!(fs.pinned().is_empty(), "{:?}", fs.pinned());
}

/// The worst moment to die: a tick journaled for the 6 s flow log, its generation not
/// yet cleared from the kernel, the 2 s flow log's records of it not yet written
/// (`FLOWLOG_FAILPOINT=tick-journaled` aborts the agent there). The next agent adopts
/// the maps and drains that generation again: the 2 s flow log gets its records, the
/// 6 s one takes the tick from the journal and not a second time from the kernel.
#[test]
fn a_crash_between_journal_and_clear_counts_the_tick_once() {
    let setup = Setup::new("jrnc");
    let Setup { a, v, sink, .. } = &setup;
    let two = TwoFlowLogs::new(&setup, "jrnc");
    let mut args = two.ctl.run_args();
    args.extend(["--pin-dir".to_string(), two.pin.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let crashing = Wrapped {
        wrapper: vec!["env".into(), "FLOWLOG_FAILPOINT=tick-journaled".into()],
        ..Wrapped::none()
    };
    let first = Agent::start_wrapped(a.name(), &crashing, &args);
    two.create(v);
    let sender = known::paced(a, v, 2000, 64, Duration::from_secs(12));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(two.journal()).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no tick journaled");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    drop(first.kill());
    let second = two.ctl.start_agent(a.name(), &["--pin-dir", &two.pin]);
    let sent = sender.join().unwrap() as u64;
    assert_eq!(sink.wait_for(sent, Duration::from_secs(5)), sent);
    let stderr = second.stderr();
    drop(second.stop());
    assert!(
        stderr.contains("stopped while emitting a window"),
        "the drained generation was not cleared: {stderr}"
    );
    assert!(stderr.contains("flow_log=slow ticks=1"), "{stderr}");
    two.assert_each_counts(v, sent);
}
