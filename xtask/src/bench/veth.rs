//! Packets per second through veth with nothing, the empty TC program, the real
//! flowlog agent, or softflowd on the receiving interface.
//!
//! Four identical veth pairs join the sender and receiver namespaces, one per setup,
//! each setup attached for a whole block of rounds; every round measures the four
//! pairs one after the other in an order that rotates by one each round, so slow
//! drift of the machine hits every setup alike. Two blocks swap the pairs between
//! setups (none and flowlog share pairs 0 and 2, empty and softflowd 1 and 3) so a
//! pair's own speed cannot favour a setup; a calibration with nothing attached shows
//! how alike the pairs are.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        tc::{SchedClassifierLinkId, TcAttachType},
        SchedClassifier,
    },
    Ebpf,
};
use flowlog_common::names;
use serde_json::json;

use super::{
    kernel::flows_label,
    packet::FlowSet,
    report::{median, Row, Target},
    sender::Sender,
    sys::{self, Pair, Proc, Topology},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    None,
    Empty,
    Flowlog,
    Softflowd,
}

impl Setup {
    pub const ALL: [Setup; 4] = [Setup::None, Setup::Empty, Setup::Flowlog, Setup::Softflowd];

    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Empty => "empty",
            Setup::Flowlog => "flowlog",
            Setup::Softflowd => "softflowd",
        }
    }
}

pub struct VethPlan {
    /// Rounds per flow count (split over the two blocks).
    pub rounds: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub sender_cpu: Option<usize>,
    /// CPUs for the agent and softflowd (`taskset -c`), away from the sender.
    pub helper_cpus: Option<String>,
    pub agent_bin: PathBuf,
    pub softflowd: PathBuf,
    pub tmp: PathBuf,
    pub flow_counts: Vec<usize>,
    /// The agent's `--window`, in seconds.
    pub window_s: u64,
    pub calibration_rounds: usize,
}

/// What is attached to one pair for a block; dropping it detaches/stops.
enum Active<'a> {
    None,
    Empty(&'a mut Ebpf, Vec<SchedClassifierLinkId>),
    Process(Proc),
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Active::Empty(ebpf, links) = self {
            if let Some(p) = ebpf.program_mut(names::TC_EMPTY) {
                if let Ok(p) = <&mut SchedClassifier>::try_from(p) {
                    for link in links.drain(..) {
                        let _ = p.detach(link);
                    }
                }
            }
        }
    }
}

fn in_receiver(topo: &Topology, helper_cpus: &Option<String>, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.receiver.name]);
    if let Some(cpus) = helper_cpus {
        cmd.args(["taskset", "-c", cpus]);
    }
    cmd.arg(program);
    cmd
}

/// Starts the real agent on the receiving end of `pair` and waits until it collects.
pub fn start_agent(
    topo: &Topology,
    pair: &Pair,
    helper_cpus: &Option<String>,
    bin: &Path,
    window: &str,
    max_flows: Option<u32>,
) -> Result<Proc> {
    let mut cmd = in_receiver(topo, helper_cpus, bin);
    cmd.args([
        "run",
        "--interface",
        &pair.if_receiver,
        "--window",
        window,
        "--output",
        "/dev/null",
    ]);
    if let Some(m) = max_flows {
        cmd.args(["--max-flows", &m.to_string()]);
    }
    cmd.env("FLOWLOG_LOG", "info,flowlog_agent::agent=debug");
    let mut p = Proc::spawn("flowlog", cmd)?;
    p.wait_log("\"collecting\" log line", Duration::from_secs(60), |l| {
        l.contains("collecting")
    })?;
    Ok(p)
}

/// Attaches the empty program like the agent attaches its programs: TCX ingress and
/// egress of the receiving end.
fn attach_empty<'a>(pair: &Pair, ebpf: &'a mut Ebpf, topo: &Topology) -> Result<Active<'a>> {
    let ifname = pair.if_receiver.clone();
    let p: &mut SchedClassifier = ebpf
        .program_mut(names::TC_EMPTY)
        .context("no empty program")?
        .try_into()?;
    let links = sys::in_netns(&topo.receiver.name, || {
        Ok(vec![
            p.attach(&ifname, TcAttachType::Ingress)?,
            p.attach(&ifname, TcAttachType::Egress)?,
        ])
    })?;
    Ok(Active::Empty(ebpf, links))
}

/// Starts the agent or softflowd on the receiving end of `pair`.
fn start_process(
    which: Setup,
    pair: &Pair,
    topo: &Topology,
    plan: &VethPlan,
    max_flows: u32,
) -> Result<Active<'static>> {
    match which {
        Setup::None | Setup::Empty => Ok(Active::None),
        Setup::Flowlog => Ok(Active::Process(start_agent(
            topo,
            pair,
            &plan.helper_cpus,
            &plan.agent_bin,
            &format!("{}s", plan.window_s),
            Some(max_flows),
        )?)),
        Setup::Softflowd => {
            let mut cmd = in_receiver(topo, &plan.helper_cpus, &plan.softflowd);
            cmd.args([
                "-i",
                &pair.if_receiver,
                "-d",
                "-v",
                "9",
                "-n",
                "127.0.0.1:9995",
            ])
            .args(["-T", "full", "-m", "200000"])
            .arg("-p")
            .arg(plan.tmp.join("softflowd.pid"))
            .arg("-c")
            .arg(plan.tmp.join("softflowd.ctl"));
            let mut p = Proc::spawn("softflowd", cmd)?;
            p.wait_until(
                "packet socket",
                Duration::from_secs(20),
                sys::has_packet_socket,
            )?;
            sys::sleep(Duration::from_millis(200))?;
            Ok(Active::Process(p))
        }
    }
}

/// Keeps a measured interval of the agent's pair clear of its window boundaries (the
/// drain, and the re-insertion of every stream after it): if one falls within the
/// next `busy`, waits until it has passed.
fn avoid_boundary(window_s: u64, busy: Duration) -> Result<()> {
    let now = sys::unix_now();
    let w = window_s as f64;
    let next = (now / w).ceil() * w;
    if now + busy.as_secs_f64() + 0.3 > next {
        sys::sleep(Duration::from_secs_f64(next - now + 1.0))?;
    }
    Ok(())
}

/// One measurement.
pub struct Sample {
    /// Datagrams per second that reached UDP in the receiver namespace.
    pub pps: f64,
    /// CPU ns per received datagram on the sending CPU: the sender thread (which runs
    /// the receive path in its softirq) plus that CPU's ksoftirqd.
    pub cpu_ns: f64,
}

fn sending_cpu_ns(sender: &Sender, ksoftirqd: &Option<String>) -> Result<u64> {
    let mut t = sender.cpu_ns()?;
    if let Some(dir) = ksoftirqd {
        t += sys::task_runtime_ns(dir)?;
    }
    Ok(t)
}

/// One measurement on `pair`: warm up (every stream live), then received packets per
/// second and CPU time per packet over a fixed interval.
pub fn measure(
    topo: &Topology,
    pair: &Pair,
    flows: &Arc<FlowSet>,
    sender_cpu: Option<usize>,
    warmup: Duration,
    interval: Duration,
) -> Result<Sample> {
    let ksoftirqd = sender_cpu.and_then(sys::ksoftirqd);
    let sender = Sender::start(
        &topo.sender.name,
        &pair.if_sender,
        Arc::clone(flows),
        sender_cpu,
        warmup + interval + Duration::from_secs(10),
    )?;
    sys::sleep(warmup)?;
    let c0 = sys::udp_received(&topo.receiver.name)?;
    let cpu0 = sending_cpu_ns(&sender, &ksoftirqd)?;
    let t0 = Instant::now();
    sys::sleep(interval)?;
    let c1 = sys::udp_received(&topo.receiver.name)?;
    let cpu1 = sending_cpu_ns(&sender, &ksoftirqd)?;
    let dt = t0.elapsed().as_secs_f64();
    sender.finish()?;
    let packets = c1.saturating_sub(c0) as f64;
    Ok(Sample {
        pps: packets / dt,
        cpu_ns: cpu1.saturating_sub(cpu0) as f64 / packets.max(1.0),
    })
}

/// Nothing attached anywhere: how alike the pairs are (1 flow), per pair median pps
/// and CPU ns per packet.
fn calibrate(topo: &Topology, plan: &VethPlan) -> Result<(Vec<f64>, Vec<f64>)> {
    let sets: Vec<Arc<FlowSet>> = topo
        .pairs
        .iter()
        .map(|p| Arc::new(FlowSet::new(1, p)))
        .collect();
    let n = topo.pairs.len();
    let mut pps = vec![Vec::new(); n];
    let mut cpu = vec![Vec::new(); n];
    for round in 0..plan.calibration_rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let s = measure(
                topo,
                &topo.pairs[i],
                &sets[i],
                plan.sender_cpu,
                plan.warmup,
                plan.measure,
            )?;
            pps[i].push(s.pps);
            cpu[i].push(s.cpu_ns);
        }
    }
    let med = |v: &Vec<Vec<f64>>| v.iter().map(|x| median(x)).collect();
    Ok((med(&pps), med(&cpu)))
}

pub fn run(
    obj: &[u8],
    topo: &Topology,
    plan: &VethPlan,
    progress: &dyn Fn(&str),
) -> Result<(Vec<Row>, serde_json::Value)> {
    assert_eq!(
        topo.pairs.len(),
        Setup::ALL.len(),
        "one veth pair per setup"
    );
    let mut ebpf = Ebpf::load(obj).context("loading the eBPF object")?;
    {
        let p: &mut SchedClassifier = ebpf
            .program_mut(names::TC_EMPTY)
            .context("no empty program")?
            .try_into()?;
        p.load()?;
    }
    let mut rows = Vec::new();
    let mut samples = json!({});

    let (calib, calib_cpu) = calibrate(topo, plan)?;
    let worst = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x / mean - 1.0).abs()).fold(0.0, f64::max)
    };
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    progress(&format!(
        "  calibration, nothing attached, per pair: pps {}, CPU ns/packet {}",
        show(&calib),
        show(&calib_cpu)
    ));
    samples["calibration_per_pair"] = json!({"pps": calib, "cpu_ns_per_packet": calib_cpu});
    let calib_note = format!(
        "calibration with nothing attached ({} rounds): the pairs' medians differ from their mean by at most {:.1}% in pps, {:.1}% in CPU ns per packet (machine noise included)",
        plan.calibration_rounds,
        worst(&calib) * 100.0,
        worst(&calib_cpu) * 100.0
    );

    for &n in &plan.flow_counts {
        let sets: Vec<Arc<FlowSet>> = topo
            .pairs
            .iter()
            .map(|p| Arc::new(FlowSet::new(n, p)))
            .collect();
        let max_flows = ((n + n / 50).next_power_of_two() as u32).max(65536);
        // [setup][round]
        let mut pps: [Vec<f64>; 4] = Default::default();
        let mut cpu: [Vec<f64>; 4] = Default::default();
        let mut round = 0;
        for block in 0..2 {
            // Setup i measures on pair (i + 2 * block) % 4.
            let pair_of = |i: usize| (i + 2 * block) % 4;
            let block_rounds = if block == 0 {
                plan.rounds.div_ceil(2)
            } else {
                plan.rounds / 2
            };
            let mut actives = Vec::new();
            for (i, which) in Setup::ALL.iter().enumerate() {
                if *which != Setup::Empty {
                    let pair = &topo.pairs[pair_of(i)];
                    actives.push(
                        start_process(*which, pair, topo, plan, max_flows)
                            .with_context(|| format!("starting {}", which.name()))?,
                    );
                }
            }
            let empty_pair = &topo.pairs[pair_of(1)];
            let _empty = attach_empty(empty_pair, &mut ebpf, topo).context("attaching empty")?;
            for _ in 0..block_rounds {
                let mut line = format!("  veth {n} flow(s), round {}/{}:", round + 1, plan.rounds);
                for k in 0..Setup::ALL.len() {
                    let idx = (k + round) % Setup::ALL.len();
                    let which = Setup::ALL[idx];
                    if which == Setup::Flowlog {
                        avoid_boundary(plan.window_s, plan.warmup + plan.measure)?;
                    }
                    let pair = &topo.pairs[pair_of(idx)];
                    let v = measure(
                        topo,
                        pair,
                        &sets[pair.index as usize],
                        plan.sender_cpu,
                        plan.warmup,
                        plan.measure,
                    )?;
                    for a in &mut actives {
                        if let Active::Process(p) = a {
                            p.check_alive().context("died during the measurement")?;
                        }
                    }
                    line.push_str(&format!(" {} {:.0}", which.name(), v.pps));
                    pps[idx].push(v.pps);
                    cpu[idx].push(v.cpu_ns);
                }
                progress(&line);
                round += 1;
            }
            for a in &mut actives {
                if let Active::Process(p) = a {
                    p.stop(Duration::from_secs(20))?;
                }
            }
        }
        let label = flows_label(n);
        samples[&label] = json!({
            "order": "setups rotate each round: none, empty, flowlog, softflowd; pairs swap after the first half",
            "pps": {"none": pps[0], "empty": pps[1], "flowlog": pps[2], "softflowd": pps[3]},
            "cpu_ns_per_packet": {"none": cpu[0], "empty": cpu[1], "flowlog": cpu[2], "softflowd": cpu[3]},
        });
        rows.extend(rows_for(n, &label, &pps, &cpu, plan.rounds, &calib_note));
    }
    Ok((rows, samples))
}

/// Relative spread of a sample: median absolute deviation / median.
fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    let dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    median(&dev) / m
}

/// Nanoseconds per packet of each setup by one method, from the rounds' samples.
struct Method {
    name: &'static str,
    /// Median ns per packet per setup.
    ns: [f64; 4],
    /// ns per packet per setup and round.
    per_round: [Vec<f64>; 4],
    /// Spread (MAD/median) of the no-program samples.
    spread: f64,
}

impl Method {
    /// Received pps: ns per packet = 1e9 / median pps (so ratios are median pps /
    /// median pps, as the issue defines them).
    fn pps(pps: &[Vec<f64>; 4]) -> Method {
        Method {
            name: "pps at the receiver",
            ns: std::array::from_fn(|i| 1e9 / median(&pps[i])),
            per_round: std::array::from_fn(|i| pps[i].iter().map(|p| 1e9 / p).collect()),
            spread: spread(&pps[0]),
        }
    }

    /// CPU accounting: CPU ns per received packet on the sending CPU.
    fn cpu(cpu: &[Vec<f64>; 4]) -> Method {
        Method {
            name: "CPU accounting (sending CPU's ns per received packet: sender thread + its ksoftirqd, which run the receive path and the hooks)",
            ns: std::array::from_fn(|i| median(&cpu[i])),
            per_round: cpu.clone(),
            spread: spread(&cpu[0]),
        }
    }

    /// Packets per second relative to no program.
    fn ratio(&self, i: usize) -> f64 {
        self.ns[0] / self.ns[i]
    }

    fn added(&self, i: usize) -> f64 {
        self.ns[i] - self.ns[0]
    }

    /// Median over rounds of the ratio within each round (adjacent in time).
    fn paired(&self, i: usize) -> f64 {
        let v: Vec<f64> = self.per_round[0]
            .iter()
            .zip(&self.per_round[i])
            .map(|(none, x)| none / x)
            .collect();
        median(&v)
    }
}

fn rows_for(
    n: usize,
    label: &str,
    pps: &[Vec<f64>; 4],
    cpu: &[Vec<f64>; 4],
    rounds: usize,
    calib_note: &str,
) -> Vec<Row> {
    // Other work on the machine takes CPU time from the sender and moves pps a lot;
    // CPU accounting is immune to that but not to everything else. Use whichever
    // method's no-program samples spread less in this run, and say which.
    let by_pps = Method::pps(pps);
    let by_cpu = Method::cpu(cpu);
    let (m, other) = if by_cpu.spread < by_pps.spread {
        (&by_cpu, &by_pps)
    } else {
        (&by_pps, &by_cpu)
    };
    let suffix = if n == 1 {
        String::new()
    } else {
        format!("_{label}")
    };
    let flows = if n == 1 {
        "1 flow".to_owned()
    } else {
        format!("{n} flows")
    };
    let method = format!(
        "by {} (spread MAD/median of no-program samples {:.3}, vs {:.3} by {}); by the other method: flowlog {:.3}, empty {:.3}, softflowd {:.3}",
        m.name,
        m.spread,
        other.spread,
        other.name.split(" (").next().unwrap_or(other.name),
        other.ratio(2),
        other.ratio(1),
        other.ratio(3)
    );
    let baseline_desc = if std::ptr::eq(m, &by_pps) {
        "pps (no program)"
    } else {
        "packets per CPU-second (no program)"
    };
    let mut rows = vec![Row::new(
        &format!("veth_pps_ratio{suffix}"),
        m.ratio(2),
        "x",
        1e9 / m.ns[0],
        baseline_desc,
    )
    .ratio_is_value()
    .target(Target::AtLeast(0.95))
    .spread(m.spread)
    .note(format!(
        "{flows}, real agent vs no program over {rounds} interleaved rounds, {method}; per-round paired median {:.3}; medians: pps none {:.0}, empty {:.0}, flowlog {:.0}, softflowd {:.0}; CPU ns/packet none {:.0}, empty {:.0}, flowlog {:.0}, softflowd {:.0}; {calib_note}",
        m.paired(2),
        1e9 / by_pps.ns[0],
        1e9 / by_pps.ns[1],
        1e9 / by_pps.ns[2],
        1e9 / by_pps.ns[3],
        by_cpu.ns[0],
        by_cpu.ns[1],
        by_cpu.ns[2],
        by_cpu.ns[3],
    ))];
    for (i, name) in [(1, "empty"), (3, "softflowd")] {
        rows.push(
            Row::new(
                &format!("veth_pps_ratio_{name}{suffix}"),
                m.ratio(i),
                "x",
                1e9 / m.ns[0],
                baseline_desc,
            )
            .ratio_is_value()
            .note(format!(
                "{flows}, same rounds and method; per-round paired median {:.3}",
                m.paired(i)
            )),
        );
    }
    rows.push(
        Row::new(
            &format!("added_ns_vs_softflowd{suffix}"),
            m.added(2) / m.added(3),
            "x",
            m.added(3),
            "ns/packet added by softflowd",
        )
        .ratio_is_value()
        .target(Target::AtMost(0.2))
        .spread(m.spread)
        .note(format!(
            "{flows}: ns per packet added to no program, medians of the same interleaved rounds, {}: flowlog {:.0} ns, softflowd {:.0} ns, empty program {:.0} ns; by {} instead: {:.0} / {:.0} = {:.2}",
            m.name.split(" (").next().unwrap_or(m.name),
            m.added(2),
            m.added(3),
            m.added(1),
            other.name.split(" (").next().unwrap_or(other.name),
            other.added(2),
            other.added(3),
            other.added(2) / other.added(3)
        )),
    );
    for (i, name) in [(2, "flowlog"), (1, "empty"), (3, "softflowd")] {
        rows.push(Row::new(
            &format!("veth_added_ns_per_packet_{name}{suffix}"),
            m.added(i),
            "ns",
            m.ns[0],
            "ns/packet (no program)",
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pps_method_is_median_over_median_and_picks_the_steadier() {
        let pps: [Vec<f64>; 4] = [
            vec![400_000.0, 500_000.0, 300_000.0],
            vec![390_000.0, 480_000.0, 290_000.0],
            vec![380_000.0, 450_000.0, 270_000.0],
            vec![300_000.0, 350_000.0, 250_000.0],
        ];
        let m = Method::pps(&pps);
        assert!((m.ratio(2) - 380_000.0 / 400_000.0).abs() < 1e-12);
        assert!((m.added(3) - (1e9 / 300_000.0 - 1e9 / 400_000.0)).abs() < 1e-6);
        // CPU ns per packet steady while pps moved: CPU accounting is chosen.
        let cpu: [Vec<f64>; 4] = [
            vec![2000.0, 2010.0, 1990.0],
            vec![2030.0, 2040.0, 2020.0],
            vec![2300.0, 2310.0, 2290.0],
            vec![2400.0, 2410.0, 2390.0],
        ];
        let rows = rows_for(1, "1_flow", &pps, &cpu, 3, "");
        assert_eq!(rows[0].name, "veth_pps_ratio");
        assert!((rows[0].value - 2000.0 / 2300.0).abs() < 1e-12);
        let added = rows
            .iter()
            .find(|r| r.name == "added_ns_vs_softflowd")
            .unwrap();
        assert!((added.value - 300.0 / 400.0).abs() < 1e-12);
    }
}
