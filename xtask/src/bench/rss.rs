//! Agent memory with N live flows: the real `flowlog run` on the receiver veth while
//! the sender cycles through N distinct 5-tuples, until a whole window holding all N
//! streams has been drained and written; then its peak RSS (`VmHWM`) and the memlock
//! of its BPF maps (`/proc/PID/fdinfo`). Baseline: the same agent at its defaults
//! with no traffic, after one window.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Result};
use flowlog_agent::{config::DEFAULT_MAX_FLOWS, loader::skipped_set_size};
use flowlog_common::table;
use serde_json::json;

use super::{
    kernel::flows_label,
    packet::FlowSet,
    report::{Row, Target},
    sender::Sender,
    sys::{self, Proc, Topology},
    veth::start_agent,
};

pub struct RssPlan {
    pub sender_cpu: Option<usize>,
    pub helper_cpus: Option<String>,
    pub agent_bin: PathBuf,
    pub flow_counts: Vec<usize>,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes the flow tables grow by from `--max-flows from` to `to` (kernel 6.x): the
/// index (`BPF_F_MMAPABLE` array of 2F entries of 8 bytes per generation) and the
/// slots (`BPF_F_MMAPABLE` array of F slots of 88 bytes per generation), both
/// generations in one array each, page-aligned; per generation the overflow map (preallocated `BPF_MAP_TYPE_HASH` of
/// O(F) = max(F/16, 1024) entries: per element `struct htab_elem` (48) + key + value
/// rounded to 8, per bucket 16, buckets = next power of two of the entries) and the
/// skipped-stream set (hash, S(F) = max(F/4, 1024) entries, key 48, value 1 -> 8).
pub fn formula_delta(from: u32, to: u32) -> f64 {
    let htab = |n: u32, key: u64, value: u64| {
        (48 + key.div_ceil(8) * 8 + value.div_ceil(8) * 8) * u64::from(n)
            + 16 * u64::from(n.next_power_of_two())
    };
    let array = |n: u32, value: u64| (value * u64::from(n)).div_ceil(4096) * 4096;
    let all = |f: u32| {
        let s = skipped_set_size(f);
        array(2 * table::index_slots(f), 8)
            + array(2 * f, 88)
            + 2 * htab(table::overflow(f), 48, 40)
            + 2 * htab(s, 48, 1)
    };
    all(to) as f64 - all(from) as f64
}

/// Largest `streams=N` of the agent's "drained" debug lines so far (logged once a
/// window's records are written), and how many such lines there were.
fn windows_emitted(p: &Proc) -> (usize, usize) {
    let mut count = 0;
    let mut max = 0;
    for l in p.log_lines() {
        if !l.contains("drained") {
            continue;
        }
        count += 1;
        if let Some(rest) = l.split("streams=").nth(1) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            max = max.max(digits.parse().unwrap_or(0));
        }
    }
    (count, max)
}

fn window_for(n: usize) -> u64 {
    if n >= 500_000 {
        10
    } else {
        5
    }
}

pub fn run(
    topo: &Topology,
    plan: &RssPlan,
    progress: &dyn Fn(&str),
) -> Result<(Vec<Row>, serde_json::Value)> {
    let mut samples = json!({});
    // Baseline: defaults, no traffic, one boundary passed.
    let (idle_rss, idle_memlock, idle_maps) = {
        let mut p = start_agent(
            topo,
            &topo.pairs[0],
            &plan.helper_cpus,
            &plan.agent_bin,
            "2s",
            None,
        )?;
        let t = std::time::Instant::now();
        loop {
            sys::sleep(Duration::from_millis(100))?;
            p.check_alive()?;
            if windows_emitted(&p).0 >= 1 || t.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        let rss = sys::vm_hwm(p.pid())?;
        let (memlock, maps) = sys::bpf_map_memlock(p.pid())?;
        p.stop(Duration::from_secs(10))?;
        (rss, memlock, maps)
    };
    progress(&format!(
        "  idle agent (defaults): VmHWM {:.1} MiB, BPF maps {:.1} MiB ({idle_maps} maps)",
        idle_rss as f64 / MIB,
        idle_memlock as f64 / MIB
    ));
    samples["idle"] = json!({"vm_hwm": idle_rss, "map_memlock": idle_memlock, "maps": idle_maps});

    let mut rows = Vec::new();
    for &n in &plan.flow_counts {
        let label = flows_label(n);
        let max_flows = ((n + n / 50).next_power_of_two() as u32).max(65536);
        let window_s = window_for(n);
        let flows = Arc::new(FlowSet::new(n, &topo.pairs[0]));
        let mut p = start_agent(
            topo,
            &topo.pairs[0],
            &plan.helper_cpus,
            &plan.agent_bin,
            &format!("{window_s}s"),
            Some(max_flows),
        )?;
        let limit = Duration::from_secs(window_s * 6 + 30);
        let sender = Sender::start(
            &topo.sender.name,
            &topo.pairs[0].if_sender,
            Arc::clone(&flows),
            plan.sender_cpu,
            limit,
        )?;
        let start = std::time::Instant::now();
        let mut confirmed = None;
        loop {
            sys::sleep(Duration::from_millis(100))?;
            p.check_alive()?;
            let (windows, max_records) = windows_emitted(&p);
            if max_records >= n {
                confirmed = Some(max_records);
                break;
            }
            // Without the debug line (log format changed): two whole windows.
            if windows == 0 && start.elapsed() > Duration::from_secs(window_s * 2 + 3) {
                break;
            }
            if start.elapsed() > limit - Duration::from_secs(5) {
                bail!(
                    "agent never emitted a window with {n} records (largest: {max_records}) within {:?}",
                    start.elapsed()
                );
            }
        }
        let rss = sys::vm_hwm(p.pid())?;
        let (memlock, maps) = sys::bpf_map_memlock(p.pid())?;
        let sent = sender.finish()?;
        p.stop(Duration::from_secs(30))?;
        progress(&format!(
            "  agent with {n} flows: VmHWM {:.1} MiB, BPF maps {:.1} MiB ({maps} maps), {sent} packets sent",
            rss as f64 / MIB,
            memlock as f64 / MIB
        ));
        samples[&label] = json!({
            "vm_hwm": rss, "map_memlock": memlock, "maps": maps, "max_flows": max_flows,
            "window_s": window_s, "records_in_window": confirmed, "packets_sent": sent,
        });
        let seen = match confirmed {
            Some(r) => format!("a window of {r} records drained and written"),
            None => "record count not confirmed (no \"drained\" debug line)".into(),
        };
        let mut row = Row::new(
            &format!("rss_{label}_mib"),
            rss as f64 / MIB,
            "MiB",
            idle_rss as f64 / MIB,
            "MiB (idle agent, defaults)",
        )
        .note(format!(
            "VmHWM of `flowlog run --window {window_s}s --max-flows {max_flows}` with {n} live UDP streams from veth traffic, {seen}"
        ));
        if n == 100_000 {
            row = row.target(Target::Below(64.0));
        }
        rows.push(row);
        rows.push(
            Row::new(
                &format!("kernel_map_memory_{label}_mib"),
                memlock as f64 / MIB,
                "MiB",
                idle_memlock as f64 / MIB,
                "MiB (defaults: --max-flows 65536)",
            )
            .note(format!(
                "sum of memlock over the agent's {maps} BPF maps (/proc/PID/fdinfo, what `bpftool map show` prints) at --max-flows {max_flows}; preallocated, so independent of the traffic"
            )),
        );
        let predicted = idle_memlock as f64 + formula_delta(DEFAULT_MAX_FLOWS, max_flows);
        rows.push(
            Row::new(
                &format!("kernel_map_memory_formula_{label}"),
                memlock as f64 / MIB,
                "MiB",
                predicted / MIB,
                "MiB (the README's formula)",
            )
            .note(format!(
                "measured memlock (ratio: measured / predicted) against the README's formula at --max-flows {max_flows}: the defaults' measured {:.2} MiB plus the growth of 2 x (8 x 2F + 88 x F) + 2 x (136 x O + 16 x P(O)) + 2 x (104 x S + 16 x P(S)) bytes for the two flow-table generations (index and slots, page-aligned), their overflow maps (O = max(F/16, 1024)) and skipped-stream sets (S = max(F/4, 1024), P = next power of two); ratio 1.000 = the formula is exact",
                idle_memlock as f64 / MIB
            )),
        );
    }
    Ok((rows, samples))
}
