//! Sinks: where rendered records go.
//!
//! Every destination is a plug-in behind the [`Sink`] trait. The agent renders a
//! window's records into one buffer of JSON lines, hands it to
//! [`Sink::write_batch`], then calls [`Sink::flush`] so the window is durable (as far
//! as the destination goes) before the next one starts.
//!
//! The trait returns boxed futures ([`SinkFuture`]) instead of using `async fn` in
//! the trait, so that it stays dyn-compatible and the agent can hold a
//! `Box<dyn Sink>` chosen at run time; the one allocation per call is negligible
//! next to a batch of records.
//!
//! [`WriterSink`] serves any [`AsyncWrite`]: stdout, an append-mode file, or a
//! `Vec<u8>` in tests. Formats live apart from destinations: [`text`] and
//! [`parquet_schema`] convert the rendered JSON lines; [`file`], [`parquet`] and
//! [`tcp`], [`ipfix`] and [`kafka`] are destinations, and network destinations sit behind a [`spool`] so that
//! capture never waits for them. A destination that went away (stdout piped into a reader that
//! exited) surfaces as [`SinkError::Closed`], never as a panic or a silent loss. This
//! relies on `SIGPIPE` being ignored, which the Rust runtime does for binaries.

pub mod file;
pub mod ipfix;
pub mod kafka;
pub mod parquet;
pub mod parquet_schema;
pub mod spool;
pub mod tcp;
pub mod text;

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::Output;

/// What [`Sink`] methods return.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination of records.
pub trait Sink: Send {
    /// Writes `lines` (whole JSON lines, each ending in `'\n'`) completely, or fails.
    /// Data may sit in buffers until [`Sink::flush`].
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a>;

    /// Pushes buffered data to the destination (called at the end of every window).
    fn flush(&mut self) -> SinkFuture<'_>;

    /// The agent stops: flush, and leave the destination complete (a file sink
    /// finishes its part file).
    fn close(&mut self) -> SinkFuture<'_> {
        self.flush()
    }

    /// Human-readable destination for logs (`stdout`, a path...).
    fn describe(&self) -> &str;
}

/// A sink that failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The reader of the destination went away (`EPIPE`): nothing more can be
    /// delivered there.
    #[error("output {sink} was closed by its reader (broken pipe)")]
    Closed { sink: String },
    #[error("cannot write records to {sink}: {source}")]
    Write {
        sink: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush records to {sink}: {source}")]
    Flush {
        sink: String,
        #[source]
        source: io::Error,
    },
}

impl SinkError {
    /// The sink (or file) this error is about.
    pub fn sink_name(&self) -> String {
        match self {
            SinkError::Open { path, .. } => path.display().to_string(),
            SinkError::Closed { sink }
            | SinkError::Write { sink, .. }
            | SinkError::Flush { sink, .. } => sink.clone(),
        }
    }

    /// Whether the destination is gone for good (broken pipe), as opposed to an I/O
    /// error that might not recur.
    pub fn is_closed(&self) -> bool {
        matches!(self, SinkError::Closed { .. })
    }
}

/// A sink writing JSON lines to any [`AsyncWrite`].
#[derive(Debug)]
pub struct WriterSink<W> {
    writer: W,
    name: String,
}

impl<W: AsyncWrite + Unpin + Send> WriterSink<W> {
    /// Wraps `writer`; `name` describes it in logs and errors.
    pub fn new(writer: W, name: impl Into<String>) -> Self {
        WriterSink {
            writer,
            name: name.into(),
        }
    }

    /// The wrapped writer (tests read back a `Vec<u8>`).
    pub fn into_inner(self) -> W {
        self.writer
    }

    fn error(&self, source: io::Error, flush: bool) -> SinkError {
        let sink = self.name.clone();
        match source.kind() {
            io::ErrorKind::BrokenPipe => SinkError::Closed { sink },
            _ if flush => SinkError::Flush { sink, source },
            _ => SinkError::Write { sink, source },
        }
    }
}

impl WriterSink<tokio::io::Stdout> {
    /// The process's standard output.
    pub fn stdout() -> Self {
        WriterSink::new(tokio::io::stdout(), "stdout")
    }
}

impl WriterSink<tokio::fs::File> {
    /// Opens `path` for appending (created with mode 0640 if missing: flow logs hold
    /// addresses of the node's peers).
    pub async fn open_file(path: &Path) -> Result<Self, SinkError> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .await
            .map_err(|source| SinkError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(WriterSink::new(file, path.display().to_string()))
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for WriterSink<W> {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move {
            if lines.is_empty() {
                return Ok(());
            }
            match self.writer.write_all(lines).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.error(e, false)),
            }
        })
    }

    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            match self.writer.flush().await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.error(e, true)),
            }
        })
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

/// A sink in the `text` format: converts each batch, and starts with the header.
pub struct TextSink {
    inner: Box<dyn Sink>,
    format: text::TextFormat,
    header_done: bool,
}

impl TextSink {
    pub fn new(inner: Box<dyn Sink>, format: text::TextFormat) -> Self {
        TextSink {
            inner,
            format,
            header_done: false,
        }
    }
}

impl Sink for TextSink {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut text = Vec::new();
            if !self.header_done {
                text = self.format.header();
                self.header_done = true;
            }
            text.extend(self.format.convert(lines));
            self.inner.write_batch(&text).await
        })
    }
    fn flush(&mut self) -> SinkFuture<'_> {
        self.inner.flush()
    }
    fn close(&mut self) -> SinkFuture<'_> {
        self.inner.close()
    }
    fn describe(&self) -> &str {
        self.inner.describe()
    }
}

/// The agent's destinations: every record batch goes to each sink in turn. A sink that
/// fails is logged, skipped for the rest of the window and tried again the next
/// window, so one broken destination (a full disk) neither stops capture nor the
/// other sinks; each failure is handed to the agent ([`FanOut::take_failures`]) for
/// the metrics. A sink whose reader is gone for good (broken pipe) is dropped; only
/// when every sink is gone does the fan-out fail (there is nowhere left to deliver).
pub struct FanOut {
    members: Vec<Member>,
    failures: Vec<usize>,
    name: String,
}

struct Member {
    sink: Box<dyn Sink>,
    /// Failed during the current window: skipped until the next one.
    failed: bool,
    /// Gone for good.
    closed: bool,
}

impl FanOut {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let name = sinks
            .iter()
            .map(|s| s.describe().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        FanOut {
            members: sinks
                .into_iter()
                .map(|sink| Member {
                    sink,
                    failed: false,
                    closed: false,
                })
                .collect(),
            failures: Vec::new(),
            name,
        }
    }

    /// Positions (in the order given to [`FanOut::new`]) of the sinks that failed
    /// since the last call, once per sink and window.
    pub fn take_failures(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.failures)
    }

    fn record(&mut self, i: usize, e: SinkError) -> Option<SinkError> {
        let m = &mut self.members[i];
        let name = m.sink.describe().to_string();
        if !m.failed {
            self.failures.push(i);
        }
        m.failed = true;
        if e.is_closed() {
            m.closed = true;
            tracing::error!(sink = %name, error = %e, "sink gone: no more records go there");
        } else {
            tracing::error!(sink = %name, error = %e, "sink failed: this window's records did not all reach it; retrying next window");
        }
        if self.members.iter().all(|m| m.closed) {
            Some(e)
        } else {
            None
        }
    }

    async fn each(&mut self, op: Op<'_>) -> Result<(), SinkError> {
        for i in 0..self.members.len() {
            if self.members[i].failed || self.members[i].closed {
                continue;
            }
            let sink = &mut self.members[i].sink;
            let result = match op {
                Op::Write(lines) => sink.write_batch(lines).await,
                Op::Flush => sink.flush().await,
                Op::Close => sink.close().await,
            };
            if let Err(e) = result {
                if let Some(fatal) = self.record(i, e) {
                    return Err(fatal);
                }
            }
        }
        if !matches!(op, Op::Write(_)) {
            // End of a window: sinks that failed in it are tried again next time.
            for m in &mut self.members {
                m.failed = false;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a [u8]),
    Flush,
    Close,
}

impl Sink for FanOut {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move { self.each(Op::Write(lines)).await })
    }
    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move { self.each(Op::Flush).await })
    }
    fn close(&mut self) -> SinkFuture<'_> {
        Box::pin(async move { self.each(Op::Close).await })
    }
    fn describe(&self) -> &str {
        &self.name
    }
}

/// Opens the sink configured by `output`.
pub async fn open(output: &Output) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match output {
        Output::Stdout => Box::new(WriterSink::stdout()),
        Output::File(path) => Box::new(WriterSink::open_file(path).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    #[tokio::test]
    async fn writes_batches_into_a_vec() {
        let mut sink = WriterSink::new(Vec::new(), "memory");
        sink.write_batch(b"{\"a\":\"1\"}\n").await.unwrap();
        sink.write_batch(b"").await.unwrap();
        sink.write_batch(b"{\"a\":\"2\"}\n{\"a\":\"3\"}\n")
            .await
            .unwrap();
        sink.flush().await.unwrap();
        assert_eq!(sink.describe(), "memory");
        assert_eq!(
            sink.into_inner(),
            b"{\"a\":\"1\"}\n{\"a\":\"2\"}\n{\"a\":\"3\"}\n"
        );
    }

    #[tokio::test]
    async fn works_as_a_trait_object() {
        let mut sink: Box<dyn Sink> = Box::new(WriterSink::new(Vec::new(), "memory"));
        sink.write_batch(b"x\n").await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(sink.describe(), "memory");
    }

    /// A writer whose reader has gone away.
    struct Broken(io::ErrorKind);

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(self.0.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(self.0.into()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn broken_pipe_is_an_error_not_a_panic() {
        let mut sink = WriterSink::new(Broken(io::ErrorKind::BrokenPipe), "stdout");
        let e = sink.write_batch(b"x\n").await.unwrap_err();
        assert!(e.is_closed(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "output stdout was closed by its reader (broken pipe)"
        );
        assert!(sink.flush().await.unwrap_err().is_closed());

        let mut sink = WriterSink::new(Broken(io::ErrorKind::StorageFull), "/var/log/f");
        let e = sink.write_batch(b"x\n").await.unwrap_err();
        assert!(matches!(e, SinkError::Write { .. }), "{e:?}");
        assert!(!e.is_closed());
        assert!(e
            .to_string()
            .starts_with("cannot write records to /var/log/f: "));
        let e = sink.flush().await.unwrap_err();
        assert!(matches!(e, SinkError::Flush { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn broken_pipe_from_a_real_pipe() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(reader);
        writer.set_nonblocking(true).unwrap();
        let writer = tokio::net::UnixStream::from_std(writer).unwrap();
        let mut sink = WriterSink::new(writer, "pipe");
        let e = sink.write_batch(b"x\n").await.unwrap_err();
        assert!(e.is_closed(), "{e:?}");
    }

    #[tokio::test]
    async fn file_output_appends() {
        let dir = std::env::temp_dir().join(format!("flowlog-sink-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        std::fs::write(&path, b"old\n").unwrap();
        for line in [&b"one\n"[..], b"two\n"] {
            let mut sink = open(&Output::File(path.clone())).await.unwrap();
            assert_eq!(sink.describe(), path.display().to_string());
            sink.write_batch(line).await.unwrap();
            sink.flush().await.unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"old\none\ntwo\n");

        let missing = dir.join("no-such-dir").join("f.jsonl");
        let e = WriterSink::open_file(&missing).await.unwrap_err();
        assert!(matches!(&e, SinkError::Open { path, .. } if *path == missing));
        assert!(e.to_string().starts_with("cannot open output file "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A sink that fails while `fail` is set (shared with the test).
    struct Flaky {
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
        kind: io::ErrorKind,
        got: Vec<u8>,
    }

    impl Sink for Flaky {
        fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
            Box::pin(async move {
                if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(if self.kind == io::ErrorKind::BrokenPipe {
                        SinkError::Closed {
                            sink: "flaky".into(),
                        }
                    } else {
                        SinkError::Write {
                            sink: "flaky".into(),
                            source: self.kind.into(),
                        }
                    });
                }
                self.got.extend_from_slice(lines);
                Ok(())
            })
        }
        fn flush(&mut self) -> SinkFuture<'_> {
            Box::pin(async { Ok(()) })
        }
        fn describe(&self) -> &str {
            "flaky"
        }
    }

    #[tokio::test]
    async fn a_failing_sink_neither_stops_the_others_nor_the_agent() {
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flaky = Flaky {
            fail: fail.clone(),
            kind: io::ErrorKind::StorageFull,
            got: Vec::new(),
        };
        let mut out = FanOut::new(vec![
            Box::new(flaky),
            Box::new(WriterSink::new(Vec::new(), "memory")),
        ]);
        out.write_batch(b"w1\n").await.unwrap();
        out.flush().await.unwrap();
        assert!(out.take_failures().is_empty());
        // Window 2: the first sink fails on its first batch; it is skipped for the
        // rest of the window, reported once, and the other sink gets everything.
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        out.write_batch(b"w2a\n").await.unwrap();
        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        out.write_batch(b"w2b\n").await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(out.take_failures(), [0]);
        // Window 3: tried again.
        out.write_batch(b"w3\n").await.unwrap();
        out.flush().await.unwrap();
        assert!(out.take_failures().is_empty());
        assert_eq!(out.describe(), "flaky, memory");
    }

    #[tokio::test]
    async fn only_when_every_sink_is_gone_does_the_fan_out_fail() {
        let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mk = || Flaky {
            fail: gone.clone(),
            kind: io::ErrorKind::BrokenPipe,
            got: Vec::new(),
        };
        let mut out = FanOut::new(vec![Box::new(mk()), Box::new(mk())]);
        let e = out.write_batch(b"x\n").await.unwrap_err();
        assert!(e.is_closed(), "{e}");
        let mut one = FanOut::new(vec![
            Box::new(mk()),
            Box::new(WriterSink::new(Vec::new(), "memory")),
        ]);
        one.write_batch(b"x\n").await.unwrap();
        one.flush().await.unwrap();
        one.write_batch(b"y\n").await.unwrap(); // the gone sink is not tried again
        assert_eq!(one.take_failures(), [0]);
    }

    #[tokio::test]
    async fn opens_stdout() {
        let mut sink = open(&Output::Stdout).await.unwrap();
        assert_eq!(sink.describe(), "stdout");
        sink.write_batch(b"").await.unwrap();
    }
}
