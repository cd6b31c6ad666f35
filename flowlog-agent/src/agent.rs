//! `flowlog run`: the agent loop.
//!
//! ```text
//!  load + verify programs ─▶ attach (TCX/clsact, XDP) ─▶ "collecting"
//!        ┌──────────────────────────────────────────────────────────────┐
//!        ▼                                                              │
//!  sleep until the next wall-clock boundary (or SIGINT/SIGTERM: now)    │
//!        ▼                                                              │
//!  FlowMaps::switch_and_drain  (generation flip + RCU grace period)     │
//!        ▼                                                              │
//!  records: OK per stream, SKIPDATA per interface that overflowed,      │
//!           NODATA per interface without traffic ─▶ sink ───────────────┘
//! ```
//! On a signal the partial window is emitted with `end` = stop time, then the links
//! are dropped (detaching every program) and the process exits 0. A switch that
//! happens late (a stalled agent) emits records whose `end` is the switch time: they
//! say honestly that they cover more than one window.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use flowlog_common::{action, counter, FlowKey, FlowStats, SkipStats};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::{
    config::{check_policy_interfaces, Config, InterfaceConfig, SinkKind, TransferType},
    drain::{DrainError, Drained, FlowMaps},
    loader::{self, LoadError},
    metrics::{Metrics, MetricsError, SinkLabels},
    policy::{ApplyError, Policy, PolicyMaps},
    privilege::{self, PrivilegeError},
    record::{Record, RecordFormat},
    sink::{self, Sink, SinkError},
    window,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error("{source}\n{hint}")]
    Permission {
        #[source]
        source: Box<LoadError>,
        hint: String,
    },
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error(transparent)]
    Drain(#[from] DrainError),
    #[error("installing the policy: {0}")]
    Policy(#[from] ApplyError),
    #[error("writing records: {0}")]
    Sink(#[from] SinkError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("reading the clock: {0}")]
    Clock(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
}

impl From<LoadError> for AgentError {
    fn from(e: LoadError) -> Self {
        if e.is_permission() {
            AgentError::Permission {
                source: Box::new(e),
                hint: privilege::explain_eperm(),
            }
        } else {
            AgentError::Load(Box::new(e))
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> Result<u64, AgentError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(AgentError::Clock(std::io::Error::last_os_error()));
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn unix_now_ns() -> Result<u64, AgentError> {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `unix_ns - monotonic_ns`: turns the kernel's `bpf_ktime_get_coarse_ns` stamps
/// (coarse `CLOCK_MONOTONIC`) into wall-clock time.
fn mono_to_unix_offset() -> Result<i128, AgentError> {
    let mono = clock_ns(libc::CLOCK_MONOTONIC)?;
    let unix = clock_ns(libc::CLOCK_REALTIME)?;
    Ok(unix as i128 - mono as i128)
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    privilege::check()?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = cfg.metrics_address {
        crate::metrics::serve(addr, Arc::clone(&metrics)).await?;
    }
    let mut ebpf = loader::load(&cfg)?;
    spawn_kernel_logs(&mut ebpf);
    let mut policy_maps = PolicyMaps::take(&mut ebpf)?;
    if let Some((path, policy)) = &cfg.policy {
        policy_maps.apply(policy, |name| ifindex_of(&cfg, name))?;
        info!(policy = %path.display(), rule_sets = policy.sets.len(), "policy installed");
    }
    let mut maps = FlowMaps::take(&mut ebpf)?;
    let attachments = loader::attach(&mut ebpf, &cfg)?;
    let (mut out, sink_names) = open_sinks(&cfg, &metrics).await?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;

    for (iface, hooks) in &attachments.hooks {
        info!(interface = %iface, hooks = %hooks, "attached");
    }
    metrics
        .attached_interfaces
        .set(attachments.hooks.len() as i64);
    metrics.active_flow_logs.set(1);
    metrics.flow_map_capacity.set(i64::from(cfg.max_flows));
    let sink_labels: Vec<SinkLabels> = sink_names
        .into_iter()
        .map(|sink| SinkLabels { sink })
        .collect();
    #[cfg(feature = "kubernetes")]
    let pod_watcher = match &cfg.kubernetes {
        Some(settings) => Some(crate::kubernetes::PodWatcher::start(settings.clone()).await?),
        None => None,
    };
    metrics.set_ready(cfg.window);
    info!(
        window = %window::format_window(cfg.window),
        interfaces = cfg.interfaces.len(),
        max_flows = cfg.max_flows,
        "collecting"
    );

    let mut win_start = unix_now_ns()?;
    let mut last_counters = maps.counters()?;
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        let now = unix_now_ns()?;
        let boundary = window::next_boundary(now, cfg.window);
        let wait = Duration::from_nanos(boundary.saturating_sub(now));
        let deadline = tokio::time::Instant::from_std(Instant::now() + wait);
        let stop = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = sigint.recv() => break true,
                _ = sigterm.recv() => break true,
                _ = sighup.recv() => reload_policy(&cfg, &mut policy_maps),
            }
        };
        // The switch happens now: normally within milliseconds of the boundary, but
        // later if the agent was stalled (SIGSTOP, an overloaded node). The records
        // then cover up to now, and say so: `end` is the switch time, not a boundary
        // that passed long before (no packet is lost either way: the programs kept
        // counting into the same generation).
        let switched = unix_now_ns()?;
        let win_end = if stop {
            switched
        } else {
            switched.max(boundary)
        };
        if switched >= boundary + cfg.window.as_nanos() as u64 {
            warn!(
                late_s = (switched - boundary) / 1_000_000_000,
                "window switch late (agent stalled): these records cover more than one window"
            );
        }
        let drain_start = Instant::now();
        #[cfg(feature = "kubernetes")]
        let pods = pod_watcher.as_ref().map(|w| (w.snapshot(), &w.settings));
        #[cfg(feature = "kubernetes")]
        let pod_fields = pods.as_ref().map(|(index, settings)| {
            move |out: &mut Vec<u8>, key: &FlowKey| {
                let (src, dst) = key.addrs();
                crate::kubernetes::append_fields(out, index, settings, Some(src), Some(dst));
            }
        });
        #[cfg(feature = "kubernetes")]
        let extra = pod_fields.as_ref().map(|f| f as &ExtraFields<'_>);
        #[cfg(not(feature = "kubernetes"))]
        let extra = None;
        let emitted = emit_window(
            &mut maps,
            &mut out,
            &mut buf,
            &cfg,
            win_start / 1_000_000_000,
            win_end / 1_000_000_000,
            extra,
        )
        .await;
        let emitted = match emitted {
            Ok(w) => w,
            Err(e) => {
                if let AgentError::Sink(se) = &e {
                    let failed = se.sink_name();
                    let label = sink_labels
                        .iter()
                        .find(|l| l.sink == failed)
                        .cloned()
                        .unwrap_or(SinkLabels { sink: failed });
                    metrics.sink_errors.get_or_create(&label).inc();
                }
                return Err(e);
            }
        };
        metrics
            .drain_seconds
            .observe(drain_start.elapsed().as_secs_f64());
        let failed = out.take_failures();
        for (i, l) in sink_labels.iter().enumerate() {
            if failed.contains(&i) {
                metrics.sink_errors.get_or_create(l).inc();
                metrics
                    .sink_undelivered
                    .get_or_create(l)
                    .inc_by(emitted.records as u64);
            } else {
                metrics
                    .records
                    .get_or_create(l)
                    .inc_by(emitted.records as u64);
                metrics.record_bytes.get_or_create(l).inc_by(emitted.bytes);
            }
        }
        metrics.window_streams.set(emitted.streams as i64);
        metrics
            .flow_map_fill
            .set(emitted.streams as f64 / f64::from(cfg.max_flows));
        metrics.skipped_streams.inc_by(emitted.skipped.streams);
        metrics.skipped_packets.inc_by(emitted.skipped.packets);
        metrics.skipped_bytes.inc_by(emitted.skipped.bytes);
        metrics.window_done();
        debug!(records = emitted.records, "window emitted");

        let counters = maps.counters()?;
        report_counters(&last_counters, &counters);
        metrics.add_datapath(&last_counters, &counters);
        last_counters = counters;

        if stop {
            out.close().await?;
            info!("stopping: partial window emitted, detaching");
            break;
        }
        win_start = win_end;
    }
    drop(attachments);
    drop(maps);
    drop(ebpf);
    Ok(())
}

/// The destinations of the records: `output` (stdout or an appended file) unless
/// named sinks replace it, and the named sinks. Returns them with their names (the
/// `sink` label of the metrics: `stdout`, `file` for `--output FILE`, or the
/// `[[sink]]` name).
async fn open_sinks(
    cfg: &Config,
    metrics: &Metrics,
) -> Result<(sink::FanOut, Vec<String>), AgentError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut names = Vec::new();
    if cfg.sinks.is_empty() || cfg.output_explicit {
        sinks.push(sink::open(&cfg.output).await?);
        names.push(match cfg.output {
            crate::config::Output::Stdout => "stdout".to_string(),
            crate::config::Output::File(_) => "file".to_string(),
        });
    }
    for s in &cfg.sinks {
        let opened: Box<dyn Sink> = match &s.kind {
            SinkKind::Stdout => {
                let plain = Box::new(sink::WriterSink::new(tokio::io::stdout(), &s.name));
                match &s.text {
                    Some(t) => Box::new(sink::TextSink::new(plain, t.clone())),
                    None => plain,
                }
            }
            // The file sink converts itself (a header at the top of every file).
            SinkKind::File(settings) => {
                Box::new(sink::file::DirSink::open(&s.name, settings.clone()).await?)
            }
            SinkKind::Parquet(settings) => {
                let columns = sink::parquet_schema::ParquetColumns::new(
                    cfg.record_format == RecordFormat::Extended,
                    pod_labels(cfg),
                );
                Box::new(
                    sink::parquet::ParquetSink::open(&s.name, settings.clone(), columns).await?,
                )
            }
            SinkKind::Tcp { address, spool } => {
                let header = s.text.as_ref().map(|t| t.header());
                let dest = Box::new(sink::tcp::TcpDeliver::new(address, header));
                let spool =
                    sink::spool::Spool::open(&s.name, spool, dest, metrics.spool_stats(&s.name))
                        .map_err(|e| SinkError::Open {
                            path: spool.dir.clone(),
                            source: std::io::Error::other(e),
                        })?;
                Box::new(sink::spool::SpooledSink::new(
                    &s.name,
                    spool,
                    s.text.clone(),
                ))
            }
        };
        info!(sink = %s.name, "sink opened");
        sinks.push(opened);
        names.push(s.name.clone());
    }
    Ok((sink::FanOut::new(sinks), names))
}

/// The pod label keys copied into records, with pod metadata on.
fn pod_labels(cfg: &Config) -> Option<&[String]> {
    #[cfg(feature = "kubernetes")]
    {
        cfg.kubernetes.as_ref().map(|k| k.labels.as_slice())
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = cfg;
        None
    }
}

fn ifindex_of(cfg: &Config, name: &str) -> Option<u32> {
    cfg.interfaces
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.ifindex)
}

/// SIGHUP: re-reads the policy file and installs it atomically; on any error the
/// policy in force stays.
fn reload_policy(cfg: &Config, maps: &mut PolicyMaps) {
    let Some((path, _)) = &cfg.policy else {
        info!("SIGHUP: no policy file configured, nothing to reload");
        return;
    };
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "policy reload failed; the previous policy stays in force");
            return;
        }
    };
    if let Err(e) = check_policy_interfaces(&policy, &cfg.interfaces) {
        error!(error = %e, "policy reload failed; the previous policy stays in force");
        return;
    }
    match maps.apply(&policy, |name| ifindex_of(cfg, name)) {
        Ok(()) => info!(policy = %path.display(), rule_sets = policy.sets.len(), "policy reloaded"),
        Err(e) => {
            error!(error = %e, "installing the reloaded policy failed; the previous policy stays in force")
        }
    }
}

/// Forwards the programs' aya-log records (rare events such as a full flow map) to
/// the agent's log.
fn spawn_kernel_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd for its whole life and always
    // returns the same one; the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Logs data-path events of the last window that an operator should know about.
fn report_counters(before: &[u64], after: &[u64]) {
    for (i, name) in counter::NAMES.iter().enumerate() {
        let delta = after[i].saturating_sub(before[i]);
        if delta == 0 {
            continue;
        }
        match i as u32 {
            counter::SEEN | counter::NOT_IP => debug!(counter = name, delta, "data path"),
            counter::FLOW_MAP_FULL => {
                warn!(
                    counter = name,
                    delta, "flow map full: packets reported as SKIPDATA (raise --max-flows)"
                )
            }
            counter::SKIP_MAP_FULL | counter::MAP_ERROR => {
                warn!(counter = name, delta, "packets lost to the log")
            }
            _ => info!(counter = name, delta, "data path"),
        }
    }
}

fn to_unix_secs(mono_ns: u64, offset: i128) -> u64 {
    let unix = mono_ns as i128 + offset;
    if unix <= 0 {
        0
    } else {
        (unix / 1_000_000_000) as u64
    }
}

/// Bytes of rendered records collected before they are handed to the sink.
const FLUSH_BYTES: usize = 1 << 20;

/// Drains the active generation and writes its records to `out` as they are read,
/// so memory stays bounded by one batch whatever the number of streams.
/// What one window put out.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Records written (OK, SKIPDATA, NODATA).
    pub records: usize,
    /// Bytes of those records.
    pub bytes: u64,
    /// Streams drained from the flow map (before the transfer-type filter).
    pub streams: usize,
    /// Skip counters summed over interfaces.
    pub skipped: SkipStats,
}

async fn emit_window(
    maps: &mut FlowMaps,
    out: &mut dyn Sink,
    buf: &mut Vec<u8>,
    cfg: &Config,
    start_s: u64,
    end_s: u64,
    extra: Option<&ExtraFields<'_>>,
) -> Result<Emitted, AgentError> {
    let mut w = WindowWriter::new(&cfg.interfaces, start_s, end_s, mono_to_unix_offset()?)
        .with_filter(cfg.transfer_type)
        .with_format(cfg.record_format)
        .with_agent_id(&cfg.agent_id);
    if let Some(extra) = extra {
        w = w.with_extra(extra);
    }
    let mut drain = maps.switch()?;
    let mut batch = Vec::with_capacity(crate::drain::BATCH);
    let mut emitted = Emitted::default();
    buf.clear();
    loop {
        batch.clear();
        let more = drain.next_batch(&mut batch)?;
        emitted.streams += batch.len();
        w.flows(buf, &batch);
        if buf.len() >= FLUSH_BYTES {
            out.write_batch(buf).await?;
            emitted.bytes += buf.len() as u64;
            buf.clear();
        }
        if !more {
            break;
        }
    }
    let skipped = drain.finish()?;
    for (_, s) in &skipped {
        emitted.skipped.merge(s);
    }
    w.finish(buf, &skipped);
    out.write_batch(buf).await?;
    emitted.bytes += buf.len() as u64;
    out.flush().await?;
    // The records are out: now empty the drained generation (idle for a window).
    maps.clear_idle()?;
    emitted.records = w.records;
    Ok(emitted)
}

/// Renders one window's records: an OK record per stream, a SKIPDATA record per
/// interface that overflowed, NODATA for each interface with neither.
pub struct WindowWriter<'a> {
    interfaces: &'a [InterfaceConfig],
    by_ifindex: HashMap<u32, usize>,
    /// Interfaces (by position) that had a stream or a skip in the window.
    active: Vec<bool>,
    start_s: u64,
    end_s: u64,
    mono_to_unix: i128,
    unknown: u64,
    transfer_type: TransferType,
    format: RecordFormat,
    /// Appends fields beyond the base record to an OK record's line (pod metadata).
    extra: Option<&'a ExtraFields<'a>>,
    /// This agent's part of `record-id` (extended format).
    agent_id: &'a str,
    /// Records rendered so far.
    pub records: usize,
}

/// Appends fields to a rendered OK record (the line, ending in `}\n`) of a stream.
pub type ExtraFields<'a> = dyn Fn(&mut Vec<u8>, &FlowKey) + 'a;

impl<'a> WindowWriter<'a> {
    /// `mono_to_unix` is `unix_ns - boottime_ns` (the kernel stamps coarse monotonic time).
    pub fn new(
        interfaces: &'a [InterfaceConfig],
        start_s: u64,
        end_s: u64,
        mono_to_unix: i128,
    ) -> Self {
        Self {
            interfaces,
            by_ifindex: interfaces
                .iter()
                .enumerate()
                .map(|(i, c)| (c.ifindex, i))
                .collect(),
            active: vec![false; interfaces.len()],
            start_s,
            end_s,
            mono_to_unix,
            unknown: 0,
            transfer_type: TransferType::All,
            format: RecordFormat::Base,
            extra: None,
            agent_id: "-",
            records: 0,
        }
    }

    /// The agent id of record ids (extended format).
    pub fn with_agent_id(mut self, agent_id: &'a str) -> Self {
        self.agent_id = agent_id;
        self
    }

    /// Fields appended to every OK record (pod metadata on Kubernetes).
    pub fn with_extra(mut self, extra: &'a ExtraFields<'a>) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Emit only the streams of this data transfer type.
    pub fn with_filter(mut self, transfer_type: TransferType) -> Self {
        self.transfer_type = transfer_type;
        self
    }

    pub fn with_format(mut self, format: RecordFormat) -> Self {
        self.format = format;
        self
    }

    /// Appends the OK records of `flows`.
    pub fn flows(&mut self, out: &mut Vec<u8>, flows: &[(FlowKey, FlowStats)]) {
        for (key, stats) in flows {
            let Some(&i) = self.by_ifindex.get(&key.ifindex) else {
                self.unknown += 1;
                continue;
            };
            // The interface had traffic, even if the filter hides it: no NODATA.
            self.active[i] = true;
            let wanted = match self.transfer_type {
                TransferType::All => true,
                TransferType::Allow => key.action == action::ACCEPT,
                TransferType::Reject => key.action == action::REJECT,
            };
            if !wanted {
                continue;
            }
            let start =
                to_unix_secs(stats.first_ns, self.mono_to_unix).clamp(self.start_s, self.end_s);
            let end = if stats.closed != 0 {
                to_unix_secs(stats.last_ns, self.mono_to_unix).clamp(start, self.end_s)
            } else {
                self.end_s
            };
            let record = Record::Flow {
                meta: &self.interfaces[i].meta,
                key: *key,
                stats: *stats,
                start,
                end,
            };
            record.write_json_as(out, self.format);
            if self.format == RecordFormat::Extended {
                record.push_record_id(out, self.agent_id);
            }
            if let Some(extra) = self.extra {
                extra(out, key);
            }
            self.records += 1;
        }
    }

    /// Appends SKIPDATA records for `skipped` and NODATA for idle interfaces.
    pub fn finish(&mut self, out: &mut Vec<u8>, skipped: &[(u32, SkipStats)]) {
        let mut skips = vec![None::<SkipStats>; self.interfaces.len()];
        for (ifindex, s) in skipped {
            match self.by_ifindex.get(ifindex) {
                Some(&i) => skips[i].get_or_insert_with(SkipStats::default).merge(s),
                None => self.unknown += 1,
            }
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            let (meta, start, end) = (&iface.meta, self.start_s, self.end_s);
            let record = if let Some(skipped) = skips[i] {
                Record::SkipData {
                    meta,
                    start,
                    end,
                    skipped,
                }
            } else if !self.active[i] {
                Record::NoData { meta, start, end }
            } else {
                continue;
            };
            record.write_json_as(out, self.format);
            if self.format == RecordFormat::Extended {
                record.push_record_id(out, self.agent_id);
            }
            self.records += 1;
        }
        if self.unknown > 0 {
            warn!(
                entries = self.unknown,
                "streams on an interface that is not configured: dropped"
            );
            self.unknown = 0;
        }
    }
}

/// Renders a whole drained window at once (see [`WindowWriter`]). Returns the
/// number of records.
pub fn render_window(
    out: &mut Vec<u8>,
    interfaces: &[InterfaceConfig],
    drained: Drained,
    start_s: u64,
    end_s: u64,
    mono_to_unix: i128,
) -> usize {
    let mut w = WindowWriter::new(interfaces, start_s, end_s, mono_to_unix);
    w.flows(out, &drained.flows);
    w.finish(out, &drained.skipped);
    w.records
}

#[cfg(test)]
mod tests {
    use flowlog_common::{action, direction, family, key_flags, TRAFFIC_PATH_UNCLASSIFIED};

    use super::*;
    use crate::record::InterfaceMeta;

    fn iface(name: &str, ifindex: u32) -> InterfaceConfig {
        InterfaceConfig {
            name: name.to_owned(),
            ifindex,
            meta: InterfaceMeta {
                eni_id: name.to_owned(),
                ..Default::default()
            },
        }
    }

    fn key(ifindex: u32, sport: u16) -> FlowKey {
        let mut k = FlowKey {
            ifindex,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: sport,
            dst_port: 80,
            protocol: 6,
            family: family::IPV4,
            direction: direction::OUT,
            action: action::ACCEPT,
            flags: key_flags::PORTS,
            traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
            _pad: [0; 2],
        };
        k.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    fn lines(buf: &[u8]) -> Vec<serde_json::Map<String, serde_json::Value>> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn window_records_ok_skip_nodata_and_times() {
        let ifs = [iface("a", 2), iface("b", 3), iface("c", 4)];
        // Boot time 0 == unix 1000 s.
        let offset = 1_000_000_000_000i128;
        let open = FlowStats {
            packets: 3,
            bytes: 180,
            first_ns: 5_500_000_000, // unix 1005.5
            last_ns: 9_000_000_000,
            tcp_flags: 0x18,
            closed: 0,
            _pad: [0; 2],
            rule_id: 0,
        };
        let closed = FlowStats {
            first_ns: 2_000_000_000, // before the window start: clamped
            last_ns: 7_200_000_000,  // unix 1007
            tcp_flags: 0x11,
            closed: 1,
            ..open
        };
        let drained = Drained {
            flows: vec![(key(2, 2000), closed), (key(2, 1000), open)],
            skipped: vec![(
                3,
                SkipStats {
                    streams: 2,
                    packets: 5,
                    bytes: 500,
                    uncounted_stream_packets: 0,
                },
            )],
        };
        let mut buf = Vec::new();
        let n = render_window(&mut buf, &ifs, drained, 1004, 1010, offset);
        assert_eq!(n, 4);
        let recs = lines(&buf);
        let get = |i: usize, k: &str| recs[i][k].as_str().unwrap().to_owned();
        // Streams in drain order; the closed one ends at its last packet, the open
        // one at the window end; a first packet before the window start is clamped.
        assert_eq!(get(0, "srcport"), "2000");
        assert_eq!(
            (get(0, "start"), get(0, "end")),
            ("1004".into(), "1007".into())
        );
        assert_eq!(get(1, "srcport"), "1000");
        assert_eq!(
            (get(1, "start"), get(1, "end")),
            ("1005".into(), "1010".into())
        );
        assert_eq!(get(2, "log-status"), "SKIPDATA");
        assert_eq!(get(2, "eni-id"), "b");
        assert_eq!(get(2, "skipped-packets"), "5");
        assert_eq!(get(3, "log-status"), "NODATA");
        assert_eq!(get(3, "eni-id"), "c");
        assert_eq!(
            (get(3, "start"), get(3, "end")),
            ("1004".into(), "1010".into())
        );
    }
}
