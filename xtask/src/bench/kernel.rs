//! What the TC program costs per packet, net of the empty program measured the same
//! way: under `BPF_PROG_TEST_RUN` (stats off) and in situ from kernel BPF statistics
//! under real veth traffic.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::{tc::TcAttachType, SchedClassifier, TestRun, TestRunOptions, Xdp},
    sys::{enable_stats, Stats},
    Ebpf,
};
use flowlog_agent::drain::MappedTable;
use flowlog_common::{names, FlowKey, FlowStats};
use serde_json::json;

use super::{
    packet::{self, FlowSet},
    report::{median, trimmed_mean, Row, Target},
    sender::Sender,
    sys::{self, Topology},
};

/// `TC_ACT_UNSPEC` (-1) as the test run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
/// `XDP_PASS`.
const XDP_PASS: u32 = 2;

pub struct TestRunPlan {
    pub rounds: usize,
    pub repeat: u32,
    pub new_flow_runs: usize,
    pub new_flow_rounds: usize,
    pub cpu: Option<usize>,
}

fn classifier<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    ebpf.program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC program"))
}

fn load_classifiers(ebpf: &mut Ebpf, names: &[&str]) -> Result<()> {
    for name in names {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    Ok(())
}

/// What the verifier costs: per program the agent loads, the instructions the
/// verifier processed (`bpf_prog_info.verified_insns`, as `veristat` reports) and the
/// load time (median of `rounds` fresh loads of the object at the agent's default
/// sizes); the baseline is the empty program's.
pub fn verifier(obj: &[u8], rounds: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    let progs = [
        (names::TC_INGRESS, "tc_ingress"),
        (names::TC_EGRESS, "tc_egress"),
        (names::XDP_INGRESS, "xdp_ingress"),
        (names::TC_EMPTY, "tc_empty"),
    ];
    let mut insns = [0u32; 4];
    let mut times: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds.max(1) {
        let mut ebpf = Ebpf::load(obj).context("loading the eBPF object")?;
        for (i, (name, _)) in progs.iter().enumerate() {
            let prog = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?;
            let t = std::time::Instant::now();
            let info = match prog {
                aya::programs::Program::Xdp(p) => {
                    p.load().with_context(|| format!("loading {name}"))?;
                    p.info()?
                }
                aya::programs::Program::SchedClassifier(p) => {
                    p.load().with_context(|| format!("loading {name}"))?;
                    p.info()?
                }
                _ => bail!("{name}: unexpected program type"),
            };
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            insns[i] = info.verified_instruction_count().unwrap_or(0);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let empty_ms = median(&mut times[3]);
    let mut rows = Vec::new();
    let mut samples = json!({});
    for (i, (_, label)) in progs.iter().enumerate().take(3) {
        let ms = median(&mut times[i]);
        rows.push(
            Row::new(
                &format!("verifier_insns_{label}"),
                f64::from(insns[i]),
                "insns",
                f64::from(insns[3]),
                "insns (empty program)",
            )
            .note("instructions the verifier processed (bpf_prog_info.verified_insns; the kernel's limit is 1,000,000)"),
        );
        rows.push(
            Row::new(
                &format!("verifier_load_ms_{label}"),
                ms,
                "ms",
                empty_ms,
                "ms (empty program)",
            )
            .note(format!(
                "BPF_PROG_LOAD wall time, median of {} loads",
                rounds.max(1)
            )),
        );
        samples[*label] = json!({"insns": insns[i], "load_ms": times[i]});
    }
    samples["tc_empty"] = json!({"insns": insns[3], "load_ms": times[3]});
    Ok((rows, samples))
}

fn run_opts(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    }
}

/// A program the benchmark runs with `BPF_PROG_TEST_RUN` (TC or XDP).
trait Runnable:
    for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>
{
    /// The verdict that passes the frame on, and its name.
    const PASS: (u32, &'static str);

    /// Average ns per run of `repeat` runs on `frame`; fails unless the program passed
    /// the frame on. With `repeat > 1` it is the wall-clock time of the whole test run
    /// divided by `repeat` (the set-up of one test run, about a microsecond, spreads
    /// over the repeats), since the kernel reports whole nanoseconds and the figures
    /// here are differences of a few; a single run uses the kernel's own figure.
    fn time_run(&self, frame: &[u8], repeat: u32) -> Result<f64> {
        let start = std::time::Instant::now();
        let r = self
            .test_run(run_opts(frame, repeat))
            .context("BPF_PROG_TEST_RUN")?;
        let wall = start.elapsed();
        let (pass, name) = Self::PASS;
        if r.return_value != pass {
            bail!("program returned {:#x}, not {name}", r.return_value);
        }
        if repeat > 1 {
            Ok(wall.as_nanos() as f64 / f64::from(repeat))
        } else {
            Ok(r.duration.as_nanos() as f64)
        }
    }
}

impl Runnable for SchedClassifier {
    const PASS: (u32, &'static str) = (TC_ACT_UNSPEC, "TC_ACT_UNSPEC");
}

impl Runnable for Xdp {
    const PASS: (u32, &'static str) = (XDP_PASS, "XDP_PASS");
}

/// Average ns per run the kernel reports for `repeat` runs of `prog` on `frame`.
fn time_run<P: Runnable>(prog: &P, frame: &[u8], repeat: u32) -> Result<f64> {
    prog.time_run(frame, repeat)
}

/// The object with its flow table sized for `max_flows` and its geometry in `CONFIG`.
pub fn load_object(obj: &[u8], max_flows: u32) -> Result<Ebpf> {
    let mut ebpf = flowlog_agent::loader::sized(max_flows)
        .load(obj)
        .context("loading the eBPF object")?;
    flowlog_agent::drain::init_config(&mut ebpf, max_flows)?;
    Ok(ebpf)
}

/// `rule_id` of every stream of generation 0 (table slots and overflow entries).
fn flow_rule_ids(ebpf: &mut Ebpf) -> Result<Vec<u32>> {
    let mut out: Vec<u32> = MappedTable::of(ebpf, 0)?
        .streams()
        .iter()
        .filter(|(_, s)| s.packets > 0)
        .map(|(_, s)| s.rule_id)
        .collect();
    let map: HashMap<&mut MapData, FlowKey, FlowStats> = ebpf
        .map_mut(names::FLOWS[0])
        .context("no FLOWS_0")?
        .try_into()?;
    for item in map.iter() {
        let (_, s) = item?;
        if s.packets > 0 {
            out.push(s.rule_id);
        }
    }
    Ok(out)
}

fn clear_flows(ebpf: &mut Ebpf) -> Result<()> {
    MappedTable::of(ebpf, 0)?.clear(u64::MAX);
    let mut fill: aya::maps::Array<&mut MapData, u64> =
        ebpf.map_mut(names::FILL).context("no FILL")?.try_into()?;
    fill.set(0, 0, 0)?;
    let mut map: HashMap<&mut MapData, FlowKey, FlowStats> = ebpf
        .map_mut(names::FLOWS[0])
        .context("no FLOWS_0")?
        .try_into()?;
    let keys = map.keys().collect::<Result<Vec<_>, _>>()?;
    for k in &keys {
        map.remove(k)?;
    }
    // And the CPUs' stream caches (generation 0's half), so that the next packets start
    // from an empty window.
    let mut cache: aya::maps::Array<&mut MapData, flowlog_common::CpuCache> =
        ebpf.map_mut(names::CACHE).context("no CACHE")?.try_into()?;
    let empty = [flowlog_common::CacheSlot::default(); flowlog_common::CACHE_SLOTS as usize];
    for cpu in 0..cache.len() / 2 {
        cache.set(flowlog_common::cache_element(cpu, 0), empty, 0)?;
    }
    Ok(())
}

/// Existing-flow figures of one frame: medians over rounds.
struct Existing {
    flowlog: f64,
    empty: f64,
    f: Vec<f64>,
    e: Vec<f64>,
}

impl Existing {
    fn net(&self) -> f64 {
        self.flowlog - self.empty
    }

    fn samples(&self) -> serde_json::Value {
        json!({"flowlog_ns": self.f, "empty_ns": self.e})
    }

    fn note(&self, frame_len: usize, plan: &TestRunPlan) -> String {
        format!(
            "BPF_PROG_TEST_RUN, {frame_len}-byte TCP frame of an existing flow, repeat={}, median of {} rounds: flowlog {:.1} ns - empty {:.1} ns",
            plan.repeat, plan.rounds, self.flowlog, self.empty
        )
    }
}

/// Existing flow, many repeats: the first run of a test run inserts the stream, the
/// other `repeat - 1` find it. Rounds alternate which program goes first.
fn existing_flow<P: Runnable>(
    fl: &P,
    empty: &P,
    frame: &[u8],
    plan: &TestRunPlan,
) -> Result<Existing> {
    time_run(fl, frame, 1)?; // the stream exists from here on
    let (mut f, mut e) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        sys::check_stop()?;
        if round.is_multiple_of(2) {
            e.push(time_run(empty, frame, plan.repeat)?);
            f.push(time_run(fl, frame, plan.repeat)?);
        } else {
            f.push(time_run(fl, frame, plan.repeat)?);
            e.push(time_run(empty, frame, plan.repeat)?);
        }
    }
    Ok(Existing {
        flowlog: median(&f),
        empty: median(&e),
        f,
        e,
    })
}

/// A rule set of `n` TCP ingress rules from 10.0.0.0/8 for ports 1000.. and, last, the
/// one for port 443 that the test packet matches (so the walk visits all of them).
fn policy_text(kind: &str, n: usize) -> String {
    let mut t = format!(
        "[[rule_set]]\nname = \"bench\"\ninterfaces = [\"lo\"]\nkind = \"{kind}\"\nmode = \"audit\"\n"
    );
    for i in 0..n {
        let port = if i + 1 == n { 443 } else { 1000 + i };
        t.push_str(&format!(
            "[[rule_set.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nports = \"{port}\"\npeer = \"10.0.0.0/8\"\naction = \"accept\"\n"
        ));
    }
    t
}

/// The existing-flow IPv4 figure with a security policy bound to the test-run device
/// (loopback, where `BPF_PROG_TEST_RUN` puts the packet): a stateless rule set whose
/// last of 16 rules matches (rule walk on every packet), and the same rules as a
/// stateful set (the flow's packets after the first are tracked).
pub fn test_run_policy(obj: &[u8], plan: &TestRunPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    use flowlog_agent::policy::{Policy, PolicyMaps};
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(cpu) = plan.cpu {
                sys::pin_thread(cpu)?;
            }
            let mut ebpf = load_object(obj, 65536)?;
            load_classifiers(&mut ebpf, &[names::TC_INGRESS, names::TC_EMPTY])?;
            let mut maps = PolicyMaps::take(&mut ebpf)?;
            let v4 = packet::ipv4_tcp(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                40_000,
                443,
                100,
            );
            let mut rows = Vec::new();
            let mut samples = json!({});
            for (kind, name) in [
                ("stateless", "kernel_ns_per_packet_policy_stateless"),
                ("stateful", "kernel_ns_per_packet_policy_stateful"),
            ] {
                let policy = Policy::parse(
                    &policy_text(kind, 16),
                    std::path::Path::new("bench-policy.toml"),
                )?;
                maps.apply(&policy, |iface| (iface == "lo").then_some(1))?;
                clear_flows(&mut ebpf)?;
                let fl = classifier(&ebpf, names::TC_INGRESS)?;
                let empty = classifier(&ebpf, names::TC_EMPTY)?;
                let m = existing_flow(fl, empty, &v4, plan)?;
                samples[kind] = m.samples();
                // The policy must have judged the stream (else the figure means nothing).
                let rule_ids = flow_rule_ids(&mut ebpf)?;
                if rule_ids.is_empty() || rule_ids.contains(&flowlog_common::policy::RULE_NONE) {
                    bail!("the {kind} policy did not apply to the test packet (rule ids {rule_ids:?})");
                }
                rows.push(
                    Row::new(name, m.net(), "ns", m.empty, "ns (empty program)")
                        .target(Target::AtMost(80.0))
                        .note(format!(
                            "{kind} rule set of 16 TCP ingress rules on the test-run device, the packet matching the last (audit mode); {}",
                            m.note(v4.len(), plan)
                        )),
                );
            }
            Ok((rows, samples))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("test-run thread panicked"))?
    })
}

/// `BPF_PROG_TEST_RUN` figures: existing IPv4 flow, new flow per run, existing IPv6
/// flow. Returns rows and the raw samples.
pub fn test_run(obj: &[u8], plan: &TestRunPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(cpu) = plan.cpu {
                sys::pin_thread(cpu)?;
            }
            test_run_pinned(obj, plan)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("test-run thread panicked"))?
    })
}

fn test_run_pinned(obj: &[u8], plan: &TestRunPlan) -> Result<(Vec<Row>, serde_json::Value)> {
    let stats_sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut ebpf = load_object(obj, 65536)?;
    load_classifiers(&mut ebpf, &[names::TC_INGRESS, names::TC_EMPTY])?;

    let v4 = packet::ipv4_tcp(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        40_000,
        443,
        100,
    );
    let v6 = packet::ipv6_tcp(
        "fd00::1".parse::<Ipv6Addr>()?,
        "fd00::2".parse::<Ipv6Addr>()?,
        40_000,
        443,
        100,
    );

    let mut samples = json!({});
    let mut rows = Vec::new();
    {
        let fl = classifier(&ebpf, names::TC_INGRESS)?;
        let empty = classifier(&ebpf, names::TC_EMPTY)?;
        for (label, frame) in [("ipv4", &v4), ("ipv6", &v6)] {
            let m = existing_flow(fl, empty, frame, plan)?;
            samples[label] = m.samples();
            let row = if label == "ipv4" {
                Row::new(
                    "kernel_ns_per_packet",
                    m.net(),
                    "ns",
                    m.empty,
                    "ns (empty program)",
                )
                .target(Target::AtMost(40.0))
            } else {
                Row::new(
                    "kernel_ns_per_packet_ipv6",
                    m.net(),
                    "ns",
                    m.empty,
                    "ns (empty program)",
                )
            };
            rows.push(row.note(m.note(frame.len(), plan)));
        }
    }
    // The XDP program on the same IPv4 frame (same stream key: the test run's
    // device, ingress), against an empty XDP program.
    for name in [names::XDP_INGRESS, names::XDP_EMPTY] {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    {
        let xdp = |name: &str| -> Result<&Xdp> {
            ebpf.program(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not an XDP program"))
        };
        let m = existing_flow(xdp(names::XDP_INGRESS)?, xdp(names::XDP_EMPTY)?, &v4, plan)?;
        samples["xdp_ipv4"] = m.samples();
        rows.push(
            Row::new(
                "kernel_ns_per_packet_xdp",
                m.net(),
                "ns",
                m.empty,
                "ns (empty XDP program)",
            )
            .note(format!("XDP program; {}", m.note(v4.len(), plan))),
        );
    }

    // New flow per run: a test run repeats one packet, so every sample is a separate
    // test run (repeat=1) of a packet with a new source port; the empty program runs on
    // the same packets the same way. Then the same packets again (existing flows,
    // repeat=1) to separate the insert from the cold single-run overhead.
    let (mut new_f, mut new_e, mut again_f) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.new_flow_rounds {
        clear_flows(&mut ebpf)?;
        let fl = classifier(&ebpf, names::TC_INGRESS)?;
        let empty = classifier(&ebpf, names::TC_EMPTY)?;
        let frames: Vec<Vec<u8>> = (0..plan.new_flow_runs)
            .map(|i| {
                packet::ipv4_tcp(
                    Ipv4Addr::new(10, 1 + round as u8, (i >> 8) as u8, i as u8),
                    Ipv4Addr::new(10, 0, 0, 2),
                    1024 + (i % 60_000) as u16,
                    443,
                    100,
                )
            })
            .collect();
        for (i, f) in frames.iter().enumerate() {
            if i.is_multiple_of(64) {
                sys::check_stop()?;
            }
            if i.is_multiple_of(2) {
                new_e.push(time_run(empty, f, 1)?);
                new_f.push(time_run(fl, f, 1)?);
            } else {
                new_f.push(time_run(fl, f, 1)?);
                new_e.push(time_run(empty, f, 1)?);
            }
        }
        for f in &frames {
            again_f.push(time_run(fl, f, 1)?);
        }
    }
    clear_flows(&mut ebpf)?;
    let (nf, ne, af) = (
        trimmed_mean(&new_f, 0.01),
        trimmed_mean(&new_e, 0.01),
        trimmed_mean(&again_f, 0.01),
    );
    samples["new_flow"] = json!({
        "runs": new_f.len(),
        "flowlog_new_ns_trimmed_mean": nf,
        "empty_ns_trimmed_mean": ne,
        "flowlog_existing_repeat1_ns_trimmed_mean": af,
    });
    rows.push(
        Row::new(
            "kernel_ns_per_packet_new_flow",
            nf - ne,
            "ns",
            ne,
            "ns (empty program, repeat=1)",
        )
        .target(Target::AtMost(300.0))
        .note(format!(
            "{} separate test runs (repeat=1), each a packet of a new stream (distinct source), 1%-trimmed means: flowlog {} ns - empty {} ns; the same packets again as existing streams: {} ns net, so the insert itself costs {} ns more than a lookup",
            new_f.len(),
            nf.round(),
            ne.round(),
            (af - ne).round(),
            (nf - af).round()
        )),
    );

    // Were stats really off? With stats on, test runs count in run_cnt.
    let runs_counted = classifier(&ebpf, names::TC_INGRESS)?.info()?.run_count();
    samples["stats_check"] =
        json!({"bpf_stats_enabled_sysctl": stats_sysctl, "run_cnt_after": runs_counted});
    if runs_counted != 0 {
        for r in &mut rows {
            r.note.push_str(
                " WARNING: kernel BPF stats were enabled during the test runs (by another process?): figures include their overhead",
            );
        }
    }
    Ok((rows, samples))
}

pub struct InSituPlan {
    pub rounds: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub sender_cpu: Option<usize>,
    pub flow_counts: Vec<usize>,
}

/// Attaches `prog` at TC ingress of the receiver veth (TCX) from inside its
/// namespace; returns the link to detach.
fn attach_ingress(
    ebpf: &mut Ebpf,
    topo: &Topology,
    prog: &str,
) -> Result<aya::programs::tc::SchedClassifierLinkId> {
    let ns = topo.receiver.name.clone();
    let ifname = topo.pairs[0].if_receiver.clone();
    let p: &mut SchedClassifier = ebpf.program_mut(prog).context("no program")?.try_into()?;
    sys::in_netns(&ns, || {
        p.attach(&ifname, TcAttachType::Ingress)
            .with_context(|| format!("attaching {prog} to {ifname}"))
    })
}

/// In-situ cost from kernel BPF statistics (`BPF_ENABLE_STATS`, the same switch as
/// `kernel.bpf_stats_enabled=1`): run_time_ns / run_cnt of the attached ingress
/// program over a measured interval of real veth traffic, flowlog minus the empty
/// program attached the same way, interleaved rounds, medians.
pub fn in_situ(
    obj: &[u8],
    topo: &Topology,
    plan: &InSituPlan,
) -> Result<(Vec<Row>, serde_json::Value)> {
    let max_flows = plan
        .flow_counts
        .iter()
        .map(|n| (n + n / 50).next_power_of_two() as u32)
        .max()
        .unwrap_or(65536)
        .max(65536);
    let mut ebpf = load_object(obj, max_flows)?;
    load_classifiers(&mut ebpf, &[names::TC_INGRESS, names::TC_EMPTY])?;
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;

    let mut rows = Vec::new();
    let mut samples = json!({});
    for &n in &plan.flow_counts {
        let set = Arc::new(FlowSet::new(n, &topo.pairs[0]));
        let progs = [names::TC_EMPTY, names::TC_INGRESS];
        let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..plan.rounds {
            for k in 0..2 {
                let which = (k + round) % 2;
                let prog = progs[which];
                let link = attach_ingress(&mut ebpf, topo, prog)?;
                let sender = Sender::start(
                    &topo.sender.name,
                    &topo.pairs[0].if_sender,
                    Arc::clone(&set),
                    plan.sender_cpu,
                    plan.warmup + plan.measure + Duration::from_secs(10),
                )?;
                sys::sleep(plan.warmup)?;
                let i0 = classifier(&ebpf, prog)?.info()?;
                sys::sleep(plan.measure)?;
                let i1 = classifier(&ebpf, prog)?.info()?;
                sender.finish()?;
                let p: &mut SchedClassifier =
                    ebpf.program_mut(prog).context("no program")?.try_into()?;
                p.detach(link)?;
                let runs = i1.run_count().saturating_sub(i0.run_count());
                let ns = i1.run_time().saturating_sub(i0.run_time()).as_nanos() as f64;
                if runs == 0 {
                    bail!("{prog} did not run during the in-situ measurement");
                }
                per[which].push(ns / runs as f64);
            }
        }
        let (me, mf) = (median(&per[0]), median(&per[1]));
        let label = flows_label(n);
        samples[&label] = json!({"empty_ns": per[0], "flowlog_ns": per[1]});
        let mut row = Row::new(
            &format!("kernel_ns_in_situ_{label}"),
            mf - me,
            "ns",
            me,
            "ns (empty program, stats on)",
        );
        if n == 100_000 {
            row = row.target(Target::AtMost(150.0));
        }
        rows.push(
            row.note(format!(
                "kernel BPF stats (run_time_ns/run_cnt) of the ingress program under veth traffic with {n} live flow(s), {} interleaved rounds of {:?}, medians: flowlog {:.1} ns - empty {:.1} ns (both include what the stats themselves add)",
                plan.rounds, plan.measure, mf, me
            )),
        );
    }
    Ok((rows, samples))
}

pub fn flows_label(n: usize) -> String {
    match n {
        1 => "1_flow".into(),
        n if n.is_multiple_of(1_000_000) => format!("{}m_flows", n / 1_000_000),
        n if n.is_multiple_of(1_000) => format!("{}k_flows", n / 1_000),
        n => format!("{n}_flows"),
    }
}

/// The memory floor under the in-situ rows: ns per dependent random read over as many
/// 88-byte records as the flow table holds slots for N streams (a pointer chase over a
/// random cycle, so no read can start before the previous one ends and no prefetcher
/// guesses the next), against the same chase over 250 records (L1-resident). A packet
/// of a stream the CPU cache does not hold reads at least one such record (its table
/// slot) before it can add to it.
pub fn memory_floor(counts: &[usize], steps: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    const WORDS: usize = 11; // 88 bytes, a `FlowSlot`
    let chase = |n: usize| -> f64 {
        // A random cyclic permutation (Sattolo's shuffle, xorshift), stored in word 0.
        let mut order: Vec<usize> = (0..n).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % i as u64) as usize);
        }
        let mut slots = vec![[0u64; WORDS]; n];
        for i in 0..n {
            slots[order[i]][0] = order[(i + 1) % n] as u64;
        }
        let mut at = 0usize;
        for _ in 0..n {
            at = slots[at][0] as usize; // warm up: one lap
        }
        let start = std::time::Instant::now();
        for _ in 0..steps {
            at = std::hint::black_box(slots[at][0]) as usize;
        }
        let ns = start.elapsed().as_nanos() as f64 / steps as f64;
        std::hint::black_box(at);
        ns
    };
    let base = median(&[chase(250), chase(250), chase(250)]);
    let mut rows = Vec::new();
    let mut samples = json!({"250_flows_ns": base});
    for &n in counts {
        let ns = median(&[chase(n), chase(n), chase(n)]);
        let label = flows_label(n);
        samples[&label] = json!(ns);
        rows.push(
            Row::new(
                &format!("memory_ns_per_dependent_read_{label}"),
                ns,
                "ns",
                base,
                "ns (the same chase over 250 records)",
            )
            .note(format!(
                "user space, one thread: a pointer chase over a random cycle of {n} 88-byte records ({:.1} MiB, the table slots of {n} streams), {steps} dependent reads, median of 3; what one read of a stream's table slot costs at that many streams before any work on it",
                (n * WORDS * 8) as f64 / (1 << 20) as f64
            )),
        );
    }
    Ok((rows, samples))
}
