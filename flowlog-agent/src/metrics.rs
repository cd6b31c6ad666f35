//! Prometheus metrics and health probes on an opt-in listener (`--metrics-address`).
//!
//! ```text
//! GET /metrics   OpenMetrics text (prometheus-client): records and bytes per sink, sink
//!                errors and undelivered records, windows, drain duration, streams and flow-map fill of the last
//!                window, skipped streams/packets/bytes, data-path event counters,
//!                attached interfaces, active flow logs; network sinks: spool depth
//!                (bytes, records), spool drops, delivered records
//! GET /healthz   200 while the window loop is alive: the last window was emitted less
//!                than two windows + 30 s ago; else 503 (a stuck drain)
//! GET /readyz    200 once the programs are attached and collecting; else 503
//! ```
//!
//! The HTTP side is a few lines over tokio's `TcpListener` (three GET routes, one
//! request per connection, bounded request size and read time) rather than an HTTP
//! framework: it keeps the agent's dependency tree and build small. It runs on the
//! agent's runtime while the window loop waits; a scrape never touches the data path.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowlog_common::counter;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info};

/// Largest request head accepted.
const MAX_REQUEST: usize = 8192;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

/// Every metric the agent exports, updated by the window loop.
pub struct Metrics {
    registry: Registry,
    pub records: Family<SinkLabels, Counter>,
    pub record_bytes: Family<SinkLabels, Counter>,
    pub sink_errors: Family<SinkLabels, Counter>,
    pub sink_undelivered: Family<SinkLabels, Counter>,
    pub windows: Counter,
    pub drain_seconds: Histogram,
    pub window_streams: Gauge,
    pub flow_map_capacity: Gauge,
    pub flow_map_fill: Gauge<f64, AtomicU64>,
    pub skipped_streams: Counter,
    pub skipped_packets: Counter,
    pub skipped_bytes: Counter,
    pub datapath: Family<EventLabels, Counter>,
    pub attached_interfaces: Gauge,
    pub active_flow_logs: Gauge,
    /// Network sinks: undelivered bytes / records in the spool.
    pub spool_bytes: Family<SinkLabels, Gauge>,
    pub spool_records: Family<SinkLabels, Gauge>,
    /// Network sinks: records dropped because the spool was full.
    pub spool_dropped: Family<SinkLabels, Counter>,
    /// Network sinks: records the destination acknowledged.
    pub delivered: Family<SinkLabels, Counter>,
    /// Tick journal: failed appends or updates, and its size.
    pub journal_errors: Counter,
    pub journal_bytes: Gauge,
    ready: AtomicBool,
    /// Unix seconds of the last emitted window (0: none yet; then start-up time).
    last_window_s: AtomicU64,
    /// Seconds without a window after which /healthz fails.
    stall_after_s: AtomicU64,
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flowlog");
        let m = Metrics {
            records: Family::default(),
            record_bytes: Family::default(),
            sink_errors: Family::default(),
            sink_undelivered: Family::default(),
            windows: Counter::default(),
            drain_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            window_streams: Gauge::default(),
            flow_map_capacity: Gauge::default(),
            flow_map_fill: Gauge::default(),
            skipped_streams: Counter::default(),
            skipped_packets: Counter::default(),
            skipped_bytes: Counter::default(),
            datapath: Family::default(),
            attached_interfaces: Gauge::default(),
            active_flow_logs: Gauge::default(),
            spool_bytes: Family::default(),
            spool_records: Family::default(),
            spool_dropped: Family::default(),
            delivered: Family::default(),
            journal_errors: Counter::default(),
            journal_bytes: Gauge::default(),
            ready: AtomicBool::new(false),
            last_window_s: AtomicU64::new(unix_s()),
            stall_after_s: AtomicU64::new(u64::MAX),
            registry: Registry::default(),
        };
        registry.register(
            "records",
            "Flow log records written, per sink",
            m.records.clone(),
        );
        registry.register(
            "record_bytes",
            "Bytes of records written, per sink",
            m.record_bytes.clone(),
        );
        registry.register(
            "sink_errors",
            "Failed writes or flushes, per sink",
            m.sink_errors.clone(),
        );
        registry.register(
            "sink_undelivered_records",
            "Records of windows in which the sink failed (not all of them reached it)",
            m.sink_undelivered.clone(),
        );
        registry.register("windows", "Capture windows emitted", m.windows.clone());
        registry.register(
            "drain_duration_seconds",
            "Time from a window boundary to its records flushed to the sinks",
            m.drain_seconds.clone(),
        );
        registry.register(
            "window_streams",
            "Streams (flow-map entries) in the last window",
            m.window_streams.clone(),
        );
        registry.register(
            "flow_map_capacity",
            "Streams a window can hold (--max-flows)",
            m.flow_map_capacity.clone(),
        );
        registry.register(
            "flow_map_fill_ratio",
            "Streams of the last window / flow-map capacity",
            m.flow_map_fill.clone(),
        );
        registry.register(
            "skipped_streams",
            "Streams not recorded because the flow map was full (SKIPDATA)",
            m.skipped_streams.clone(),
        );
        registry.register(
            "skipped_packets",
            "Packets of skipped streams (SKIPDATA)",
            m.skipped_packets.clone(),
        );
        registry.register(
            "skipped_bytes",
            "Bytes of skipped streams (SKIPDATA)",
            m.skipped_bytes.clone(),
        );
        registry.register(
            "datapath_events",
            "Data-path event counters of the kernel programs (COUNTERS map)",
            m.datapath.clone(),
        );
        registry.register(
            "attached_interfaces",
            "Interfaces with programs attached",
            m.attached_interfaces.clone(),
        );
        registry.register(
            "active_flow_logs",
            "Flow log instances capturing",
            m.active_flow_logs.clone(),
        );
        registry.register(
            "spool_bytes",
            "Undelivered bytes in a network sink's spool",
            m.spool_bytes.clone(),
        );
        registry.register(
            "spool_records",
            "Undelivered records in a network sink's spool",
            m.spool_records.clone(),
        );
        registry.register(
            "spool_dropped_records",
            "Records a network sink's full spool dropped (never delivered)",
            m.spool_dropped.clone(),
        );
        registry.register(
            "delivered_records",
            "Records a network sink's destination acknowledged (TCP: written and flushed)",
            m.delivered.clone(),
        );
        registry.register(
            "tick_journal_errors",
            "Failed appends or updates of the tick journal (those ticks are in memory only)",
            m.journal_errors.clone(),
        );
        registry.register(
            "tick_journal_bytes",
            "Size of the tick journal (accumulated ticks of windows spanning several)",
            m.journal_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The spool metrics of network sink `sink`.
    pub fn spool_stats(&self, sink: &str) -> crate::sink::spool::SpoolStats {
        let l = SinkLabels {
            sink: sink.to_string(),
        };
        crate::sink::spool::SpoolStats {
            depth_bytes: self.spool_bytes.get_or_create(&l).clone(),
            depth_records: self.spool_records.get_or_create(&l).clone(),
            dropped: self.spool_dropped.get_or_create(&l).clone(),
            delivered: self.delivered.get_or_create(&l).clone(),
        }
    }

    /// The programs are attached: ready; /healthz expects a window every `window`.
    pub fn set_ready(&self, window: Duration) {
        self.last_window_s.store(unix_s(), Ordering::Relaxed);
        self.stall_after_s
            .store(2 * window.as_secs().max(1) + 30, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A window was emitted.
    pub fn window_done(&self) {
        self.windows.inc();
        self.last_window_s.store(unix_s(), Ordering::Relaxed);
    }

    /// Adds the data-path counter deltas (indexed by [`counter`]).
    pub fn add_datapath(&self, before: &[u64], after: &[u64]) {
        for (i, name) in counter::NAMES.iter().enumerate() {
            let delta = after[i].saturating_sub(before[i]);
            let c = self.datapath.get_or_create(&EventLabels {
                event: (*name).to_string(),
            });
            c.inc_by(delta);
        }
    }

    fn healthy(&self) -> bool {
        let last = self.last_window_s.load(Ordering::Relaxed);
        unix_s().saturating_sub(last) < self.stall_after_s.load(Ordering::Relaxed)
    }

    fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Binds `addr` and serves the endpoints in a task on the current runtime.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(address = %local, "metrics listener: /metrics /healthz /readyz");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let m = Arc::clone(&metrics);
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &m).await {
                    debug!(%peer, error = %e, "metrics request");
                }
            });
        }
    });
    Ok(local)
}

async fn handle(mut stream: TcpStream, m: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(p));
            }
            if buf.len() > MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    let (status, ctype, body) = match head_end {
        None => (400, "text/plain", "bad request\n".to_string()),
        Some(end) => {
            let head = String::from_utf8_lossy(&buf[..end]);
            let line = head.lines().next().unwrap_or("");
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("GET"), Some(path)) => route(path, m),
                (Some(_), Some(_)) => (405, "text/plain", "only GET\n".to_string()),
                _ => (400, "text/plain", "bad request\n".to_string()),
            }
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut resp = String::with_capacity(body.len() + 128);
    let _ = write!(
        resp,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

fn route(path: &str, m: &Metrics) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.render(),
        ),
        "/healthz" if m.healthy() => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "window loop stalled\n".into()),
        "/readyz" if m.ready.load(Ordering::Relaxed) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not attached yet\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_readiness() {
        let m = Metrics::new();
        assert_eq!(route("/readyz", &m).0, 503);
        assert_eq!(route("/healthz", &m).0, 200);
        m.set_ready(Duration::from_secs(60));
        assert_eq!(route("/readyz", &m).0, 200);
        assert_eq!(route("/nope", &m).0, 404);
        // A loop that stopped emitting windows is unhealthy.
        m.last_window_s.store(unix_s() - 1000, Ordering::Relaxed);
        assert_eq!(route("/healthz", &m).0, 503);
        m.window_done();
        assert_eq!(route("/healthz?x=1", &m).0, 200);
    }

    #[test]
    fn exposition_names_and_values() {
        let m = Metrics::new();
        m.records
            .get_or_create(&SinkLabels {
                sink: "stdout".into(),
            })
            .inc_by(7);
        m.add_datapath(&[0; 15], &[5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let text = m.render();
        assert!(
            text.contains("flowlog_records_total{sink=\"stdout\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("flowlog_datapath_events_total{event=\"seen\"} 5\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
