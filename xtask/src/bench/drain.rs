//! How long the agent's own code takes to drain N live flows at a window boundary and
//! write them as JSON lines to a file: the same steps as the agent's drain
//! (`FlowMaps::switch`: generation flip + RCU grace period; `GenerationDrain::next_batch`
//! (the generation's slots read from the memory-mapped table) and
//! `InstanceWindow::stream` per stream, rendering directly
//! for a flow log whose window ends, the buffer written every MiB;
//! `GenerationDrain::finish` and `InstanceWindow::finish`), timed per step; then
//! `FlowMaps::clear_idle` (emptying the drained generation, after the records are
//! out), timed apart. The flow table is filled from user space the way the programs
//! place streams (`MappedTable::insert`), sized as the agent's `--max-flows` sets it.
use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use flowlog_agent::{
    drain::FlowMaps,
    instance::{
        schedule::{InstanceWindow, Member, Render},
        Checks, FlowLogFile, FlowLogSpec,
    },
    record::{InterfaceMeta, RecordFormat},
};
use flowlog_common::{
    action, direction, family, key_flags, FlowKey, FlowStats, TRAFFIC_PATH_UNCLASSIFIED,
};
use serde_json::json;

use super::{
    kernel::flows_label,
    report::{Row, Target},
    sys,
};

const IFINDEX: u32 = 7;
/// The agent hands rendered records to its sink every MiB (`agent::FLUSH_BYTES`).
const FLUSH_BYTES: usize = 1 << 20;

fn clock(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn key(i: usize) -> FlowKey {
    let mut k = FlowKey {
        ifindex: IFINDEX,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 1024 + (i % 50_000) as u16,
        dst_port: 443,
        protocol: 6,
        family: family::IPV4,
        direction: direction::IN,
        action: action::ACCEPT,
        flags: key_flags::PORTS,
        traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
        _pad: [0; 2],
    };
    k.src_addr[..4].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    k.dst_addr[..4].copy_from_slice(&[10, 250, 0, 1]);
    k
}

struct Timing {
    fill: Duration,
    /// `FlowMaps::take` + `switch` (generation flip + RCU grace period), part of `drain`.
    switch: Duration,
    drain: Duration,
    render: Duration,
    /// Time the drain waited to hand buffers to the writer (and for its last write).
    write: Duration,
    /// The writer thread's own time in `write_all` + `flush`.
    write_busy: Duration,
    /// Wall time from the switch to the last byte written.
    wall: Duration,
    /// Emptying the drained generation once the records are out (not in `drain`).
    clear: Duration,
    records: usize,
    bytes: usize,
}

fn one(obj: &[u8], n: usize, out: &Path) -> Result<Timing> {
    let max = (n as u32).max(65536);
    let mut ebpf = flowlog_agent::loader::sized(max)
        .load(obj)
        .context("loading the eBPF object")?;
    let mut maps = FlowMaps::take(&mut ebpf, max)?;
    let now_boot = clock(libc::CLOCK_BOOTTIME);
    let t = Instant::now();
    {
        // Placed as the programs place them: table slots by the same probes, the few
        // whose probes find no slot in the overflow map.
        let mut overflow = 0;
        for i in 0..n {
            if i.is_multiple_of(10_000) {
                sys::check_stop()?;
            }
            let v = FlowStats {
                packets: 10 + (i % 1000) as u64,
                bytes: 1500 * (10 + (i % 1000) as u64),
                first_ns: now_boot - 5_000_000_000,
                last_ns: now_boot - 1_000_000_000,
                tcp_flags: 0x18,
                ..FlowStats::default()
            };
            let k = key(i);
            if !maps.table_mut(0).insert(i as u32, &k, &v) {
                maps.overflow_mut(0)
                    .insert(k, v, 0)
                    .with_context(|| format!("inserting flow {i} of {n}"))?;
                overflow += 1;
            }
        }
        maps.set_fill(0, n as u64)?;
        if overflow > 0 {
            eprintln!("  drain {n}: {overflow} streams in the overflow map");
        }
    }
    let fill = t.elapsed();

    let (spec, _) = FlowLogSpec::validate(
        &FlowLogFile {
            name: "bench".into(),
            resource_type: "ENI".into(),
            resource_ids: vec!["bench0".into()],
            window: Some("1m".into()),
            ..Default::default()
        },
        &Checks {
            interface_exists: None,
            bridge_exists: &|_| true,
            paths_configured: false,
            sinks: &[],
        },
    )
    .context("the bench's flow log")?;
    let unix = clock(libc::CLOCK_REALTIME);
    let offset = unix as i128 - clock(libc::CLOCK_BOOTTIME) as i128;
    let end_s = unix / 1_000_000_000;
    let mut file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    // The agent's file sinks write through tokio's `File`: a write hands the buffer to
    // a blocking thread and returns, and the next write waits for it. The same here: a
    // writer thread takes one buffer at a time (a rendezvous channel), so rendering
    // the next MiB overlaps writing the last one, and the drain ends once the writer
    // is done.
    let (to_writer, from_drain) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || -> std::io::Result<Duration> {
        let mut busy = Duration::ZERO;
        for mut b in from_drain {
            let t = Instant::now();
            file.write_all(&b)?;
            busy += t.elapsed();
            b.clear();
            let _ = recycle.send(b);
        }
        let t = Instant::now();
        file.flush()?;
        Ok(busy + t.elapsed())
    });
    let hand_over = |buf: &mut Vec<u8>| -> Result<()> {
        let next = recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FLUSH_BYTES + (1 << 16)));
        let full = std::mem::replace(buf, next);
        to_writer
            .send(full)
            .map_err(|_| anyhow::anyhow!("the writer thread stopped"))
    };

    // The timed part mirrors the agent's `emit_window`: switch generation (RCU grace
    // period), then
    // batch by batch: drain from the kernel, render JSON lines, hand
    // every MiB to the writer thread; finally skip counters, SKIPDATA/NODATA, flush.
    let (mut drain_t, mut render_t, mut write_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut bytes = 0usize;
    let t = Instant::now();
    let wall_start = t;
    let end_ns = end_s * 1_000_000_000;
    let mut w = InstanceWindow::new(end_ns - 60_000_000_000);
    w.members.insert(
        IFINDEX,
        Member::new(
            "bench0".into(),
            InterfaceMeta {
                eni_id: "bench0".into(),
                ..Default::default()
            },
            end_ns - 60_000_000_000,
        ),
    );
    let render = Render {
        format: RecordFormat::Base,
        id_scope: "bench",
        mono_to_unix: offset,
        extra: None,
    };
    let mut gen = maps.switch()?;
    let mut batch = Vec::with_capacity(flowlog_agent::drain::BATCH);
    let mut buf = Vec::with_capacity(FLUSH_BYTES + (1 << 16));
    let switch_t = t.elapsed();
    drain_t += switch_t;
    loop {
        let t = Instant::now();
        batch.clear();
        let more = gen.next_batch(&mut batch)?;
        let t1 = Instant::now();
        for (key, stats) in batch.iter_mut() {
            key.traffic_path = stats.traffic_path;
            w.stream(&spec, key, stats, Some((&mut buf, &render, end_ns)));
        }
        let t2 = Instant::now();
        if buf.len() >= FLUSH_BYTES {
            bytes += buf.len();
            hand_over(&mut buf)?;
        }
        drain_t += t1 - t;
        render_t += t2 - t1;
        write_t += t2.elapsed();
        if !more {
            break;
        }
    }
    let t = Instant::now();
    let skipped = gen.finish()?;
    let t1 = Instant::now();
    for (ifindex, s) in &skipped {
        w.skipped(*ifindex, s);
    }
    w.finish(&mut buf, &render, end_ns);
    let t2 = Instant::now();
    bytes += buf.len();
    hand_over(&mut buf)?;
    drop(to_writer);
    let write_busy = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    drain_t += t1 - t;
    render_t += t2 - t1;
    write_t += t2.elapsed();
    let wall = wall_start.elapsed();
    let t = Instant::now();
    maps.clear_idle()?;
    let clear_t = t.elapsed();
    let _ = fs::remove_file(out);
    let records = w.records as usize;
    if records != n {
        bail!("{n} flows drained into {records} records");
    }
    Ok(Timing {
        fill,
        switch: switch_t,
        drain: drain_t,
        render: render_t,
        write: write_t,
        write_busy,
        wall,
        clear: clear_t,
        records,
        bytes,
    })
}

pub fn run(
    obj: &[u8],
    sizes: &[usize],
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<(Vec<Row>, serde_json::Value)> {
    let mut rows = Vec::new();
    let mut samples = json!({});
    for &n in sizes {
        sys::check_stop()?;
        let label = flows_label(n);
        let t = one(obj, n, &dir.join(format!("drain-{label}.jsonl")))?;
        let total = t.wall.as_secs_f64();
        let floor = (t.render + t.write_busy).as_secs_f64();
        progress(&format!(
            "  drain {n}: {total:.3} s (switch + reading the generation {:.3} s, render {:.3} s, waiting for the writer {:.3} s; the writer busy {:.3} s); fill {:.2} s",
            t.drain.as_secs_f64(),
            t.render.as_secs_f64(),
            t.write.as_secs_f64(),
            t.write_busy.as_secs_f64(),
            t.fill.as_secs_f64()
        ));
        samples[&label] = json!({
            "fill_s": t.fill.as_secs_f64(),
            "take_switch_s": t.switch.as_secs_f64(),
            "take_switch_drain_s": t.drain.as_secs_f64(),
            "render_s": t.render.as_secs_f64(),
            "write_wait_s": t.write.as_secs_f64(),
            "writer_busy_s": t.write_busy.as_secs_f64(),
            "wall_s": t.wall.as_secs_f64(),
            "clear_after_s": t.clear.as_secs_f64(),
            "records": t.records,
            "bytes": t.bytes,
        });
        let short = label.trim_end_matches("_flows");
        let mut row = Row::new(
            &format!("drain_{label}_seconds"),
            total,
            "s",
            floor,
            "s (render + write alone, one after the other)",
        )
        .note(format!(
            "{} records, {:.1} MB of JSON lines, wall time from the switch to the last byte written: take + switch (RCU grace period) {:.3} s, reading the mapped table and the overflow map {:.3} s, render {:.3} s, waiting for the writer {:.3} s (a writer thread writes each MiB while the next is rendered, as tokio's File does for the agent's file sinks; its own write time {:.3} s); after the records are out (not counted), emptying the generation took {:.3} s",
            t.records,
            t.bytes as f64 / 1e6,
            t.switch.as_secs_f64(),
            (t.drain - t.switch).as_secs_f64(),
            t.render.as_secs_f64(),
            t.write.as_secs_f64(),
            t.write_busy.as_secs_f64(),
            t.clear.as_secs_f64()
        ));
        if n == 1_000_000 {
            row = row.target(Target::AtMost(0.5));
        }
        rows.push(row);
        let mut kernel = Row::new(
            &format!("drain_{label}_kernel_seconds"),
            t.drain.as_secs_f64(),
            "s",
            total,
            "s (whole drain)",
        )
        .note("the kernel part of the drain row above: take + switch (RCU grace period) + reading the generation (its slots in the memory-mapped table, its overflow map by BPF_MAP_LOOKUP_BATCH)".to_string());
        if n == 1_000_000 {
            kernel = kernel.target(Target::AtMost(0.1));
        }
        rows.push(kernel);
        rows.push(Row::new(
            &format!("drain_{short}_records_per_second"),
            t.records as f64 / total,
            "records/s",
            t.records as f64 / floor,
            "records/s (render + write alone, one after the other)",
        ));
    }
    Ok((rows, samples))
}
