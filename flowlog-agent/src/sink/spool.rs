//! The on-disk spool in front of every network sink (`tcp`, `ipfix`, `kafka`):
//! capture never waits for a destination.
//!
//! ```text
//! SPOOL_DIR/seg-00000000000000000007.spool   whole lines, appended per window
//! SPOOL_DIR/seg-00000000000000000008.spool   (the segment being written)
//! SPOOL_DIR/offset                           "7 1234\n": delivered up to byte 1234 of
//!                                            segment 7 (replaced atomically)
//! ```
//!
//! * **Writing** ([`Spool::append`], [`Spool::commit`]): the sink's `write_batch`
//!   appends the window's lines to the last segment, its `flush` fsyncs it (and the
//!   directory after a new segment); only then are the lines visible to delivery. Both return as soon as the local disk did:
//!   nothing waits for the destination.
//! * **Delivery**: one tokio task per spool reads the oldest undelivered lines (whole
//!   lines, at most [`CHUNK`] bytes at a time), hands them to a [`Deliver`] and, once
//!   that acknowledged them, advances the offset (written to `offset.tmp`, fsync'd,
//!   renamed) and deletes segments delivered completely. A failure leaves the offset
//!   where it was: the same lines are sent again after capped exponential backoff
//!   ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]). Delivery is thus at-least-once:
//!   lines sent just before a failure may arrive twice; `record-id`
//!   (`--record-format extended`) lets the consumer drop the copies.
//! * **Restart** (clean stop, crash, SIGKILL): segments and the offset are on disk;
//!   the next start cuts each segment after its last whole line (a crash in the middle
//!   of a window loses only that unsynced window) and delivers what is left first.
//! * **Bound**: undelivered bytes stay within `max_bytes`. A window that would go
//!   beyond it first makes room by dropping the **oldest** segments (whole segments
//!   of whole lines: a segment is about `max_bytes / 8`); a window larger than the
//!   whole spool is dropped itself. Oldest first, as log shippers usually do, because
//!   during a long outage the recent records are the ones an operator still acts on
//!   (an ongoing attack, a current outage), while the old ones have mostly lost
//!   their value; and dropping a finished segment costs one `unlink`, never a rewrite.
//!   Every drop is logged with the sink and the number of records, and counted
//!   ([`SpoolStats::dropped`], metric `flowlog_spool_dropped_records_total`).
//!   Lines the delivery task is sending while their segment is dropped are counted
//!   as delivered if the send succeeds, as dropped if it fails: every record is
//!   counted exactly once, delivered or dropped.
use std::{
    collections::VecDeque,
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{io::AsyncWriteExt as _, sync::Notify, task::JoinHandle};
use tracing::{info, warn};

use super::{Sink, SinkError, SinkFuture};

/// Largest read handed to [`Deliver::send`] at once.
pub const CHUNK: usize = 1 << 20;
/// First retry delay after a failed delivery.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default bound of a spool.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default parent of the spool directories (`<this>/<sink name>`).
pub const DEFAULT_DIR: &str = "/var/lib/flowlog/spool";

const SEG_PREFIX: &str = "seg-";
const SEG_SUFFIX: &str = ".spool";
const OFFSET: &str = "offset";

/// Where a spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// A spool that failed (its local disk).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: cannot open: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool {}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A destination fed from a spool.
pub trait Deliver: Send + 'static {
    /// Sends `lines` (whole lines), returning once the destination has them as far
    /// as it can say (TCP: written and flushed to the socket).
    fn send<'a>(
        &'a mut self,
        lines: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

    /// The destination, for logs.
    fn describe(&self) -> String;
}

/// The spool's metrics, for one sink (handles into the registry's families).
#[derive(Clone, Debug, Default)]
pub struct SpoolStats {
    pub depth_bytes: Gauge,
    pub depth_records: Gauge,
    pub dropped: Counter,
    pub delivered: Counter,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Synced bytes (visible to delivery).
    len: u64,
    /// Records in those bytes.
    records: u64,
}

/// Lines being sent by the delivery task.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    records: u64,
    /// Their segment was dropped meanwhile (counted once the send is settled).
    dropped: bool,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    /// Delivered bytes / records of `segments[0]`.
    head_offset: u64,
    head_records: u64,
    /// Appended to the last segment but not synced yet.
    pending_bytes: u64,
    pending_records: u64,
    next_seq: u64,
    in_flight: Option<InFlight>,
    /// The writer rotates to a new segment at its next append.
    rotate: bool,
}

impl State {
    fn depth(&self) -> (u64, u64) {
        let bytes: u64 = self.segments.iter().map(|s| s.len).sum();
        let records: u64 = self.segments.iter().map(|s| s.records).sum();
        (
            bytes - self.head_offset + self.pending_bytes,
            records - self.head_records + self.pending_records,
        )
    }
}

struct Shared {
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// New lines are synced (or the spool is closing).
    wake: Notify,
    stats: SpoolStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough counters; go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &State) {
        let (bytes, records) = st.depth();
        self.stats.depth_bytes.set(bytes as i64);
        self.stats.depth_records.set(records as i64);
    }

    fn seg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{SEG_PREFIX}{seq:020}{SEG_SUFFIX}"))
    }
}

/// The writing side of a spool; its delivery task runs until [`Spool::close`].
pub struct Spool {
    shared: Arc<Shared>,
    /// The last segment, open for appending.
    file: Option<(u64, tokio::fs::File)>,
    /// A segment was created since the last commit: its directory entry needs an
    /// fsync of the directory too.
    new_segment: bool,
    task: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

fn open_err(dir: &Path) -> impl Fn(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Open {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Reads the committed offset: (segment, byte).
fn read_offset(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join(OFFSET)).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Replaces the offset file atomically (temp file, fsync, rename).
fn write_offset(dir: &Path, seq: u64, offset: u64) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!("{OFFSET}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{seq} {offset}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(OFFSET))
}

impl Spool {
    /// Opens (or creates, mode 0700) the spool directory, recovers what an earlier
    /// run left, and starts delivering it to `dest`.
    pub fn open(
        name: &str,
        settings: &SpoolSettings,
        dest: Box<dyn Deliver>,
        stats: SpoolStats,
    ) -> Result<Spool, SpoolError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = settings.dir.clone();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(open_err(&dir))?;
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(open_err(&dir))? {
            let e = e.map_err(open_err(&dir))?;
            let fname = e.file_name();
            let Some(n) = fname
                .to_str()
                .and_then(|n| n.strip_prefix(SEG_PREFIX))
                .and_then(|n| n.strip_suffix(SEG_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            seqs.push(n);
        }
        seqs.sort_unstable();
        let (done_seq, done_offset) = read_offset(&dir).unwrap_or((0, 0));
        let mut state = State {
            segments: VecDeque::new(),
            head_offset: 0,
            head_records: 0,
            pending_bytes: 0,
            pending_records: 0,
            next_seq: seqs
                .last()
                .map_or(done_seq + 1, |s| s + 1)
                .max(done_seq + 1),
            in_flight: None,
            // Earlier segments are never appended to again.
            rotate: true,
        };
        for seq in seqs {
            let path = dir.join(format!("{SEG_PREFIX}{seq:020}{SEG_SUFFIX}"));
            if seq < done_seq {
                std::fs::remove_file(&path).map_err(open_err(&dir))?;
                continue;
            }
            let mut data = std::fs::read(&path).map_err(open_err(&dir))?;
            let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep < data.len() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(open_err(&dir))?;
                f.set_len(keep as u64).map_err(open_err(&dir))?;
                f.sync_all().map_err(open_err(&dir))?;
                warn!(sink = %name, file = %path.display(), cut_bytes = data.len() - keep, "spool: cut a partial line left by a crash");
                data.truncate(keep);
            }
            if seq == done_seq {
                let off = (done_offset as usize).min(data.len());
                // The offset always sits after a newline; be safe if it does not.
                let off = data[..off]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                state.head_offset = off as u64;
                state.head_records = count_lines(&data[..off]);
            }
            state.segments.push_back(Segment {
                seq,
                path,
                len: data.len() as u64,
                records: count_lines(&data),
            });
        }
        if state.segments.front().is_some_and(|s| s.seq != done_seq) {
            state.head_offset = 0;
            state.head_records = 0;
        }
        let shared = Arc::new(Shared {
            name: name.to_string(),
            dir,
            max_bytes: settings.max_bytes,
            segment_bytes: (settings.max_bytes / 8).max(1),
            state: Mutex::new(state),
            wake: Notify::new(),
            stats,
        });
        {
            let st = shared.lock();
            shared.publish(&st);
            let (bytes, records) = st.depth();
            if records > 0 {
                info!(sink = %name, records, bytes, "spool: delivering what an earlier run left first");
            }
        }
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(deliver_loop(Arc::clone(&shared), dest, Arc::clone(&stop)));
        Ok(Spool {
            shared,
            file: None,
            new_segment: false,
            task: Some(task),
            stop,
        })
    }

    /// Undelivered (bytes, records), including lines not yet committed.
    pub fn depth(&self) -> (u64, u64) {
        self.shared.lock().depth()
    }

    /// Appends whole lines (not visible to delivery before [`Spool::commit`]). Makes
    /// room by dropping the oldest segments; returns the records dropped.
    pub async fn append(&mut self, lines: &[u8]) -> Result<u64, SpoolError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let n = count_lines(lines);
        let len = lines.len() as u64;
        let sh = Arc::clone(&self.shared);
        let mut dropped = 0;
        let mut doomed = Vec::new();
        let seq = {
            let mut st = sh.lock();
            // Larger than the whole spool: this batch itself goes.
            let mut drop_incoming = len > sh.max_bytes;
            while !drop_incoming && st.depth().0 + len > sh.max_bytes {
                if st.segments.is_empty() {
                    break;
                }
                if st.segments.len() == 1 && st.pending_bytes > 0 {
                    // The only segment holds this window's earlier batches: they
                    // cannot go without a rewrite, so this batch goes.
                    drop_incoming = true;
                    break;
                }
                let seg = st.segments.pop_front().expect("not empty");
                let mut lost = seg.records - st.head_records;
                if let Some(f) = st.in_flight.as_mut().filter(|f| f.seq == seg.seq) {
                    // Settled (delivered or dropped) by the delivery task.
                    f.dropped = true;
                    lost -= f.records;
                }
                dropped += lost;
                st.head_offset = 0;
                st.head_records = 0;
                if st.segments.is_empty() {
                    st.rotate = true;
                }
                doomed.push(seg.path);
            }
            if drop_incoming {
                dropped += n;
                sh.publish(&st);
                None
            } else {
                if st.rotate || st.segments.is_empty() {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    st.rotate = false;
                    st.segments.push_back(Segment {
                        seq,
                        path: sh.seg_path(seq),
                        len: 0,
                        records: 0,
                    });
                }
                st.pending_bytes += len;
                st.pending_records += n;
                sh.publish(&st);
                Some(st.segments.back().expect("pushed above").seq)
            }
        };
        for p in doomed {
            let _ = tokio::fs::remove_file(&p).await;
        }
        if dropped > 0 {
            sh.stats.dropped.inc_by(dropped);
            warn!(sink = %sh.name, dropped_records = dropped, max_bytes = sh.max_bytes, "spool full: dropped the oldest records");
        }
        let Some(seq) = seq else {
            return Ok(dropped);
        };
        if self.file.as_ref().is_none_or(|(s, _)| *s != seq) {
            let path = sh.seg_path(seq);
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .await
                .map_err(|source| SpoolError::Write {
                    path: path.clone(),
                    source,
                })?;
            self.file = Some((seq, f));
            self.new_segment = true;
        }
        let (_, f) = self.file.as_mut().expect("opened above");
        if let Err(source) = f.write_all(lines).await {
            self.undo_pending().await;
            return Err(SpoolError::Write {
                path: sh.seg_path(seq),
                source,
            });
        }
        Ok(dropped)
    }

    /// After a failed write: cut the segment back to its synced length.
    async fn undo_pending(&mut self) {
        let sh = Arc::clone(&self.shared);
        let (len, path) = {
            let mut st = sh.lock();
            st.pending_bytes = 0;
            st.pending_records = 0;
            sh.publish(&st);
            match st.segments.back() {
                Some(s) => (s.len, s.path.clone()),
                None => return,
            }
        };
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.set_len(len);
        }
        self.file = None;
    }

    /// Makes the appended lines durable (fsync) and hands them to delivery.
    pub async fn commit(&mut self) -> Result<(), SpoolError> {
        let sh = Arc::clone(&self.shared);
        if let Some((seq, f)) = self.file.as_mut() {
            let seq = *seq;
            let mut synced = match f.flush().await {
                Ok(()) => f.sync_data().await,
                Err(e) => Err(e),
            };
            if synced.is_ok() && self.new_segment {
                synced = match tokio::fs::File::open(&sh.dir).await {
                    Ok(d) => d.sync_all().await,
                    Err(e) => Err(e),
                };
                self.new_segment = synced.is_err();
            }
            if let Err(source) = synced {
                self.undo_pending().await;
                return Err(SpoolError::Write {
                    path: sh.seg_path(seq),
                    source,
                });
            }
            let mut st = sh.lock();
            let (pb, pr) = (st.pending_bytes, st.pending_records);
            st.pending_bytes = 0;
            st.pending_records = 0;
            if let Some(seg) = st.segments.back_mut().filter(|s| s.seq == seq) {
                seg.len += pb;
                seg.records += pr;
                if seg.len >= sh.segment_bytes {
                    st.rotate = true;
                }
            }
            sh.publish(&st);
        }
        sh.wake.notify_one();
        Ok(())
    }

    /// Commits, then gives delivery up to `grace` to empty the spool; what is left
    /// stays on disk for the next start.
    pub async fn close(&mut self, grace: Duration) -> Result<(), SpoolError> {
        self.commit().await?;
        let deadline = tokio::time::Instant::now() + grace;
        while self.depth().1 > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (bytes, records) = self.depth();
        if records > 0 {
            info!(sink = %self.shared.name, records, bytes, "spool: undelivered records kept for the next start");
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The next undelivered lines: (segment, start, bytes).
async fn next_chunk(sh: &Shared) -> Option<(u64, u64, Vec<u8>)> {
    let (seq, path, start, end) = {
        let mut st = sh.lock();
        // A segment delivered completely while it was the last one (being written)
        // goes once a newer one exists.
        while st.segments.len() > 1 && st.segments.front().is_some_and(|s| st.head_offset >= s.len)
        {
            let done = st.segments.pop_front().expect("not empty");
            st.head_offset = 0;
            st.head_records = 0;
            let next = st.segments.front().expect("more than one").seq;
            if let Err(e) = write_offset(&sh.dir, next, 0) {
                warn!(sink = %sh.name, error = %e, "spool: cannot write the offset file (lines may be sent again after a restart)");
            }
            let _ = std::fs::remove_file(&done.path);
        }
        let seg = st.segments.front()?;
        if st.head_offset >= seg.len {
            return None;
        }
        (seg.seq, seg.path.clone(), st.head_offset, seg.len)
    };
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut f = tokio::fs::File::open(&path).await.ok()?;
    f.seek(io::SeekFrom::Start(start)).await.ok()?;
    let want = (end - start).min(CHUNK as u64) as usize;
    let mut buf = vec![0; want];
    f.read_exact(&mut buf).await.ok()?;
    if (want as u64) < end - start {
        // Cut after the last whole line (records are far smaller than CHUNK).
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => buf.truncate(i + 1),
            None => {
                let mut rest = vec![0; (end - start) as usize - want];
                f.read_exact(&mut rest).await.ok()?;
                buf.extend(rest);
                let i = buf.iter().rposition(|&b| b == b'\n')?;
                buf.truncate(i + 1);
            }
        }
    }
    Some((seq, start, buf))
}

/// Advances past delivered lines; deletes a segment delivered completely.
fn advance(sh: &Shared, seq: u64, start: u64, len: u64, records: u64) {
    let mut doomed = None;
    {
        let mut st = sh.lock();
        let Some(f) = st.in_flight.take() else { return };
        sh.stats.delivered.inc_by(records);
        if f.dropped {
            sh.publish(&st);
            return;
        }
        if st.segments.front().is_some_and(|s| s.seq == seq) && st.head_offset == start {
            st.head_offset += len;
            st.head_records += records;
            let head = st.segments.front().expect("checked");
            let done = st.head_offset >= head.len && st.segments.len() > 1;
            let offset = if done { 0 } else { st.head_offset };
            let committed_seq = if done { seq + 1 } else { seq };
            if done {
                doomed = st.segments.pop_front().map(|s| s.path);
                st.head_offset = 0;
                st.head_records = 0;
            }
            if let Err(e) = write_offset(&sh.dir, committed_seq, offset) {
                warn!(sink = %sh.name, error = %e, "spool: cannot write the offset file (lines may be sent again after a restart)");
            }
        }
        sh.publish(&st);
    }
    if let Some(p) = doomed {
        let _ = std::fs::remove_file(p);
    }
}

async fn deliver_loop(sh: Arc<Shared>, mut dest: Box<dyn Deliver>, stop: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let Some((seq, start, lines)) = next_chunk(&sh).await else {
            tokio::select! {
                _ = sh.wake.notified() => continue,
                _ = stop.notified() => return,
                // Re-check now and then (a chunk read raced with a drop).
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        let records = count_lines(&lines);
        {
            let mut st = sh.lock();
            st.in_flight = Some(InFlight {
                seq,
                records,
                dropped: false,
            });
        }
        let sent = tokio::select! {
            r = dest.send(&lines) => Some(r),
            _ = stop.notified() => None,
        };
        match sent {
            Some(Ok(())) => {
                if failing {
                    info!(sink = %sh.name, destination = %dest.describe(), "delivering again");
                    failing = false;
                }
                backoff = BACKOFF_MIN;
                advance(&sh, seq, start, lines.len() as u64, records);
            }
            other => {
                let lost = {
                    let mut st = sh.lock();
                    match st.in_flight.take() {
                        Some(f) if f.dropped => {
                            sh.stats.dropped.inc_by(f.records);
                            Some(f.records)
                        }
                        _ => None,
                    }
                };
                if let Some(lost) = lost {
                    warn!(sink = %sh.name, dropped_records = lost, "spool full: dropped the oldest records");
                }
                let Some(Err(e)) = other else { return };
                if !failing {
                    warn!(sink = %sh.name, destination = %dest.describe(), error = %e, "delivery failed; records wait in the spool, retrying with backoff");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.notified() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A sink that writes into a [`Spool`]; its delivery task feeds the destination.
pub struct SpooledSink {
    name: String,
    spool: Spool,
    text: Option<super::text::TextFormat>,
}

impl SpooledSink {
    /// `text`: convert the JSON lines to the text format before spooling (the
    /// destination writes the header itself).
    pub fn new(name: &str, spool: Spool, text: Option<super::text::TextFormat>) -> Self {
        SpooledSink {
            name: name.to_string(),
            spool,
            text,
        }
    }
}

fn sink_err(sink: &str, e: SpoolError) -> SinkError {
    let source = match e {
        SpoolError::Open { source, .. } | SpoolError::Write { source, .. } => source,
    };
    SinkError::Write {
        sink: sink.to_string(),
        source,
    }
}

impl Sink for SpooledSink {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move {
            let converted;
            let lines = match &self.text {
                Some(t) => {
                    converted = t.convert(lines);
                    &converted[..]
                }
                None => lines,
            };
            self.spool
                .append(lines)
                .await
                .map(|_| ())
                .map_err(|e| sink_err(&self.name, e))
        })
    }

    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            self.spool
                .commit()
                .await
                .map_err(|e| sink_err(&self.name, e))
        })
    }

    fn close(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            self.spool
                .close(Duration::from_secs(2))
                .await
                .map_err(|e| sink_err(&self.name, e))
        })
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tcp::TcpDeliver;
    use tokio::io::AsyncBufReadExt as _;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlog-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A receiver collecting lines from every connection.
    async fn receiver(addr: &str) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(s).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        g.lock().unwrap().push(l);
                    }
                });
            }
        });
        (got, task)
    }

    async fn free_addr() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn open(dir: &Path, max_bytes: u64, addr: &str, stats: &SpoolStats) -> Spool {
        let settings = SpoolSettings {
            dir: dir.to_path_buf(),
            max_bytes,
        };
        Spool::open(
            "t",
            &settings,
            Box::new(TcpDeliver::new(addr, None)),
            stats.clone(),
        )
        .unwrap()
    }

    async fn wait_for(got: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
        for _ in 0..500 {
            if got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything beyond n would be a duplicate: give it a moment to show up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        got.lock().unwrap().clone()
    }

    fn window(w: usize, lines: usize) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("w{w:03}-{i:04}\n").into_bytes())
            .collect()
    }

    fn expected(windows: std::ops::Range<usize>, lines: usize) -> Vec<String> {
        windows
            .flat_map(|w| (0..lines).map(move |i| format!("w{w:03}-{i:04}")))
            .collect()
    }

    #[tokio::test]
    async fn delivers_in_order_and_removes_what_was_delivered() {
        let dir = scratch("order");
        let addr = free_addr().await;
        let (got, rx) = receiver(&addr).await;
        let stats = SpoolStats::default();
        // Small segments: several rotations.
        let mut spool = open(&dir, 8 * 1000, &addr, &stats);
        for w in 0..20 {
            spool.append(&window(w, 50)).await.unwrap();
            spool.commit().await.unwrap();
        }
        let lines = wait_for(&got, 1000).await;
        assert_eq!(lines, expected(0..20, 50));
        assert_eq!(stats.delivered.get(), 1000);
        assert_eq!(stats.dropped.get(), 0);
        spool.close(Duration::from_secs(1)).await.unwrap();
        assert_eq!(spool.depth(), (0, 0));
        assert_eq!((stats.depth_bytes.get(), stats.depth_records.get()), (0, 0));
        // Delivered segments are gone: at most the last one (being written) is left.
        let segs = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with(SEG_PREFIX)
            })
            .count();
        assert!(segs <= 1, "{segs} segments left");
        rx.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn what_a_killed_run_left_is_delivered_first_after_a_restart() {
        let dir = scratch("restart");
        let addr = free_addr().await; // nobody listens yet
        let stats = SpoolStats::default();
        let mut spool = open(&dir, 1 << 20, &addr, &stats);
        for w in 0..5 {
            spool.append(&window(w, 10)).await.unwrap();
            spool.commit().await.unwrap();
        }
        // A window being written when the agent is killed: not committed, and its
        // last line cut in the middle.
        spool.append(&window(5, 10)).await.unwrap();
        // (tokio's file hands the write to a thread: let it land before the cut.)
        spool.file.as_mut().unwrap().1.flush().await.unwrap();
        let last = {
            let st = spool.shared.lock();
            st.segments.back().unwrap().path.clone()
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all_sync(b"w005-00");
        assert_eq!(stats.depth_records.get(), 60);
        assert_eq!(stats.delivered.get(), 0);
        drop(spool); // SIGKILL: no close, the delivery task is gone

        let (got, rx) = receiver(&addr).await;
        let stats = SpoolStats::default();
        let mut spool = open(&dir, 1 << 20, &addr, &stats);
        // The 10 appended lines of window 5 reached the file: they are whole lines
        // and go too; the cut line does not.
        spool.append(&window(6, 10)).await.unwrap();
        spool.commit().await.unwrap();
        let lines = wait_for(&got, 70).await;
        assert_eq!(lines, expected(0..7, 10));
        assert_eq!(stats.delivered.get(), 70);
        spool.close(Duration::from_secs(1)).await.unwrap();

        // A third run has nothing left to send.
        let stats = SpoolStats::default();
        let spool = open(&dir, 1 << 20, &addr, &stats);
        assert_eq!(spool.depth(), (0, 0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got.lock().unwrap().len(), 70);
        drop(spool);
        rx.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_full_spool_drops_the_oldest_and_counts_every_record() {
        let dir = scratch("overflow");
        let addr = free_addr().await;
        let stats = SpoolStats::default();
        // 10-byte lines, windows of 5 lines (50 bytes), a 400-byte spool: segments of
        // 50 bytes, so each window is one segment and at most 8 windows are kept.
        let mut spool = open(&dir, 400, &addr, &stats);
        for w in 0..20 {
            spool.append(&window(w, 5)).await.unwrap();
            spool.commit().await.unwrap();
        }
        assert_eq!(stats.dropped.get(), 12 * 5);
        assert_eq!(spool.depth(), (400, 40));
        assert_eq!(stats.depth_records.get(), 40);
        // A window larger than the whole spool is dropped itself.
        spool.append(&window(99, 41)).await.unwrap();
        assert_eq!(stats.dropped.get(), 12 * 5 + 41);

        let (got, rx) = receiver(&addr).await;
        let lines = wait_for(&got, 40).await;
        // The newest 8 windows arrive, in order; everything else was counted.
        assert_eq!(lines, expected(12..20, 5));
        assert_eq!(
            stats.delivered.get() + stats.dropped.get(),
            20 * 5 + 41,
            "every record delivered or dropped"
        );
        spool.close(Duration::from_secs(1)).await.unwrap();
        rx.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    trait WriteAllSync {
        fn write_all_sync(self, b: &[u8]);
    }
    impl WriteAllSync for std::fs::File {
        fn write_all_sync(mut self, b: &[u8]) {
            use std::io::Write as _;
            self.write_all(b).unwrap();
        }
    }
}
